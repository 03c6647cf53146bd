"""``rolegate-operator``: placeholder until the operator lands (see the operator issue)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: says the operator is not built yet; exit status 2."""
    print("rolegate-operator: the operator is not implemented yet", file=sys.stderr)
    return 2
