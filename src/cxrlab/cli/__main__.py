"""``python -m cxrlab.cli``: the same as the ``cxrlab`` command."""

from cxrlab.cli import main

main()
