"""``python -m replicator``: the ``replicator`` command."""

from replicator.cli import main

main()
