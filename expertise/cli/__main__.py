"""``python -m expertise.cli``."""

import sys

from expertise.cli import main

if __name__ == "__main__":
    sys.exit(main())
