"""``python -m expertise.cli``."""

from expertise.cli import main

if __name__ == "__main__":  # importing the module (as tests that import every module do) runs nothing
    main()
