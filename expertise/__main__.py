"""``python -m expertise``, as torchrun launches it: ``torchrun --nproc_per_node=N -m expertise upstream ...``."""

import sys

from expertise.cli import main

if __name__ == "__main__":
    sys.exit(main())
