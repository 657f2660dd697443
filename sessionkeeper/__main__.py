"""``python -m sessionkeeper``: the ``sessionkeeper`` command."""

import sys

from sessionkeeper.cli import main

if __name__ == "__main__":
    sys.exit(main())
