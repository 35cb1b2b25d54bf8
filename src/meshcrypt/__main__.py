"""`python -m meshcrypt` runs the command line."""

import sys

from meshcrypt.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
