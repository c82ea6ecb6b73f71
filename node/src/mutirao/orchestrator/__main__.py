import sys

from mutirao.cli import main

sys.exit(main(["orchestrator", *sys.argv[1:]]))
