"""``python -m rolegate_gateway``: the same as ``rolegate-gateway``."""

import sys

from rolegate_gateway.cli import main

if __name__ == "__main__":  # not when a worker process imports the main module
    sys.exit(main())
