"""``python -m mutirao.backup``: the hot-standby orchestrator (see ``mutirao backup``)."""

import sys

from mutirao.cli import main

if __name__ == "__main__":
    sys.exit(main(["backup", *sys.argv[1:]]))
