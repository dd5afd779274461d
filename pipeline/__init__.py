"""darkroom's engine: job files, planning, execution on Ray, manifests, and the CLI."""

__version__ = "0.1.0"
