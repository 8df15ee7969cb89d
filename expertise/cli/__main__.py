"""``python -m expertise.cli``."""

from expertise.cli import main

if __name__ == "__main__":  # importing the module (the member-contract test imports them all) runs nothing
    main()
