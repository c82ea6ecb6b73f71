import sys

from mutirao.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
