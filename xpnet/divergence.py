"""Divergence: a NaN or infinite loss, weight or optimizer buffer ends training, named, before
anything holding it is saved (README: "Divergence is caught, and never saved")."""

from __future__ import annotations

import math

from xpnet.errors import DivergenceError


def largest_weight(net, optimizer):
    """max |w| over every parameter and optimizer buffer, as a 0-d device array: NaN or infinite once
    any of them is (Adam's squared gradients can overflow while the weights stay finite). One reduction
    per array, read with the epoch's metrics: the loss is measured before each step, so a step that
    ruins the weights shows here first."""
    xp = net.xp
    return xp.max(xp.stack([xp.max(xp.abs(a)) for a in [*net.params, *optimizer.state_arrays()]]))


def check_diverged(record: dict, largest: float, optimizer) -> None:
    """Raise ``DivergenceError`` if the epoch's loss, its weights or its validation loss are not finite."""
    if not math.isfinite(record["loss"]):
        problem = f"the loss became {record['loss']}"
    elif not math.isfinite(largest):
        problem = f"the weights or the optimizer's state became {largest} (after the loss was measured)"
    elif not math.isfinite(record.get("val_loss", 0.0)):
        problem = f"the validation loss became {record['val_loss']}"
    else:
        return
    raise DivergenceError(
        f"training diverged in epoch {record['epoch']}: {problem}; try a smaller learning rate "
        f"(now {optimizer.base_lr:g})"
    )
