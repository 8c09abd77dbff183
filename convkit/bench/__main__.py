"""``python -m convkit.bench ...``: the same command as ``convkit bench ...``."""
import sys

from convkit.bench.cli import main

sys.exit(main())
