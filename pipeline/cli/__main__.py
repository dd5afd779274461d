"""``python -m pipeline.cli``: how a cluster submission starts ``darkroom run`` on the head node."""

from pipeline.cli import main

main()
