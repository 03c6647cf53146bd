"""``python -m rolegate_operator``: the same as ``rolegate-operator``."""

import sys

from rolegate_operator.cli import main

sys.exit(main())
