"""``python -m convkit.bench ...``: the same command as ``convkit bench ...``."""
import sys

from convkit.bench import main

sys.exit(main())
