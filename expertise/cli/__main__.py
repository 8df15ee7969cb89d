"""``python -m expertise.cli``."""

from expertise.cli import main

main()
