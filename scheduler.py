"""``python scheduler.py`` from a checkout: the ``sessionkeeper`` command (design card).

The command line lives in sessionkeeper.cli; this file is not installed, so that no top-level
``scheduler`` module can clash with a bot's own (PyPI has a package of that name). With no
arguments it runs the daemon, as ``sessionkeeper run`` does.
"""

import sys

from sessionkeeper.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["run"]))
