"""``python -m convkit train ...`` / ``python -m convkit bench ...``: same as the console script."""
import sys

from convkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
