"""Small statistics the harness needs: percentiles of samples, medians across rounds.

Owns :func:`percentile`, :func:`median` and :func:`summary`. Pure functions on lists of
floats; units are whatever the caller's samples are in (seconds throughout the harness).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["median", "percentile", "summary"]


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of ``samples``, linearly interpolated between the
    two nearest ranks; None for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return percentile(present, 0.5)


def summary(samples: Sequence[float]) -> dict[str, float | None]:
    """``{"p50", "p99", "mean", "max"}`` of ``samples`` (None each when empty)."""
    return {
        "p50": percentile(samples, 0.5),
        "p99": percentile(samples, 0.99),
        "mean": sum(samples) / len(samples) if samples else None,
        "max": max(samples) if samples else None,
    }
