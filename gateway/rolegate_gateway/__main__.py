"""``python -m rolegate_gateway``: the same as ``rolegate-gateway``."""

import sys

from rolegate_gateway.cli import main

sys.exit(main())
