"""``python -m expertise.cli``."""

from expertise.cli import main

if __name__ == "__main__":  # importing the module (as the contract test imports every module) runs nothing
    main()
