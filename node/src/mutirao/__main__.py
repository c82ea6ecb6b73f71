import sys

from mutirao.cli import main

sys.exit(main())
