"""Training scripts for darkroom's own models (not needed at inference time)."""
