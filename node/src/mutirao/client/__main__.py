import sys

from mutirao.cli import main

sys.exit(main(["client", *sys.argv[1:]]))
