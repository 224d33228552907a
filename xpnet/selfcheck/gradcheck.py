"""The finite-difference gradient check: one definition for ``selfcheck`` and the test suite.

The reference is the five-point central difference

    ∂C/∂θ ≈ [-C(θ+2h) + 8 C(θ+h) - 8 C(θ-h) + C(θ-2h)] / 12h,

whose truncation error is O(h⁴). With h = 1e-3 in float64 the truncation error is near
1e-12, and rounding noise in the cost (a GPU's reductions round in another order: a few
ulps of C) enters as about 18 ulps / 12h ≈ 3e-13 per entry; against a floor of 1e-5 both
stay more than 30 times under the tolerance of 1e-6, so the check tells a wrong gradient
(a relative error of 1e-5 and up) from noise on any device. A plain central difference
with h = 1e-6 could not: its rounding noise alone, 1 ulp / 2h ≈ 1e-10, is 1e-6 of the floor
(the H200 run failed selfcheck at 1.8e-6 with it while the tests passed).
"""

from __future__ import annotations

import numpy as np

H = 1e-3
TOLERANCE = 1e-6
FLOOR = 1e-5  # entries smaller than this in both are held to an absolute error of 1e-11
KINK_MARGIN = 0.1  # no ReLU pre-activation nearer its kink than this, so ±2h never crosses it


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |g - g_fd| / max(|g|, |g_fd|, FLOOR) over the entries."""
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), FLOOR)
    return float(np.max(np.abs(analytic - numeric) / scale)) if scale.size else 0.0


def smooth_inputs(net, n: int, rng, rate: float = 0.0):
    """``n`` inputs whose hidden pre-activations all keep KINK_MARGIN from zero, and
    (for dropout ``rate``) the fixed inverted-dropout masks, one per hidden layer, they were checked with."""
    state = net.state_dict()
    candidates = rng.standard_normal((40 * n, net.sizes[0]))
    a, ok, masks = candidates, np.ones(len(candidates), dtype=bool), []
    for l, act in enumerate(net.activations[:-1]):
        z = a @ state[f"layers.{l}.weight"].T + state[f"layers.{l}.bias"]
        if act.name in ("relu", "leaky_relu"):
            ok &= np.all(np.abs(z) > KINK_MARGIN, axis=1)
        masks.append((rng.uniform(size=z.shape) >= rate) / (1.0 - rate))
        a = act.forward(np, z) * masks[-1]
    if ok.sum() < n:
        raise ValueError("could not find inputs away from the ReLU kinks")
    return candidates[ok][:n], [m[ok][:n] for m in masks]


def finite_differences(net, cost) -> list[np.ndarray]:
    """Five-point differences of ``cost()`` (a 0-d device array) in every entry of every parameter."""
    numeric = []
    for i, param in enumerate(net.params):
        base = net.backend.to_host(param)
        grad = np.zeros_like(base)
        for k in range(base.size):
            values = []
            for step in (2 * H, H, -H, -2 * H):
                shifted = base.copy()
                shifted.flat[k] += step
                net.params[i] = net.backend.upload(shifted, net.dtype)
                values.append(float(net.backend.to_host(cost())))
            grad.flat[k] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * H)
        net.params[i] = param
        numeric.append(grad)
    return numeric
