"""How much a figure moved between the repeats of one run: the noise a comparison must beat.

A shared machine's noise is measured, never assumed: every timed figure is repeated,
and its *relative spread* is half the range of the repeats over their median. Two runs
differ beyond noise when their medians are further apart than their spreads together,
that is when the repeats of the two runs (centred on their medians) do not overlap.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def relative_spread(values: Sequence[float]) -> float:
    """Half the range of ``values`` over their median (0.02: the repeats lie within about ±2%)."""
    median = statistics.median(values)
    return (max(values) - min(values)) / (2 * abs(median)) if median else 0.0


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Repeat i of one series over repeat i of another: runners timed back to back share a moment
    of the machine, so the slow drifts and the neighbours that come and go cancel in the ratio."""
    return [a / b for a, b in zip(numerators, denominators)]
