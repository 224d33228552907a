"""Weight initialisers, drawn on the host from a seeded ``numpy.random.Generator``.

Drawing on the host (then uploading) is what makes one seed give the same initial
weights on NumPy, CuPy, PyTorch and array-api-strict. Weights are shaped
``(fan_out, fan_in)``, as in ``torch.nn.Linear``; biases start at zero except for
``standard_normal``, which follows the seeds and draws them from N(0, 1) too.
"""

from __future__ import annotations

import math

import numpy as np

from xpnet.names import Registry, canonical


def standard_normal(rng, fan_in, fan_out):
    """N(0, 1) weights and biases, as in Nielsen's network.py (slow to train: saturates)."""
    return rng.standard_normal((fan_out, fan_in)), rng.standard_normal(fan_out)


def scaled_normal(rng, fan_in, fan_out):
    """N(0, 1/fan_in): Nielsen's improved initialisation (LeCun normal)."""
    return rng.standard_normal((fan_out, fan_in)) / math.sqrt(fan_in), np.zeros(fan_out)


def glorot_uniform(rng, fan_in, fan_out, gain=1.0):
    """U(±gain·sqrt(6/(fan_in+fan_out))): Glorot & Bengio 2010."""
    limit = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_out, fan_in)), np.zeros(fan_out)


def glorot_normal(rng, fan_in, fan_out, gain=1.0):
    """N(0, gain²·2/(fan_in+fan_out))."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return rng.normal(0.0, std, (fan_out, fan_in)), np.zeros(fan_out)


def glorot_uniform_sigmoid(rng, fan_in, fan_out):
    """Glorot uniform with the 4x gain Glorot & Bengio suggest for sigmoid units."""
    return glorot_uniform(rng, fan_in, fan_out, gain=4.0)


def he_normal(rng, fan_in, fan_out):
    """N(0, 2/fan_in): He et al. 2015, for ReLU layers."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_out, fan_in)), np.zeros(fan_out)


def he_uniform(rng, fan_in, fan_out):
    """U(±sqrt(6/fan_in))."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, (fan_out, fan_in)), np.zeros(fan_out)


#: Every initialiser by name: a new one is its function above plus one line here.
INITIALIZERS = Registry(
    "init",
    {
        "standard_normal": standard_normal,
        "scaled_normal": scaled_normal,
        "glorot_uniform": glorot_uniform,
        "glorot_normal": glorot_normal,
        "glorot_uniform_sigmoid": glorot_uniform_sigmoid,
        "he_normal": he_normal,
        "he_uniform": he_uniform,
    },
    aliases={
        "xavier_uniform": "glorot_uniform",
        "xavier_normal": "glorot_normal",
        "kaiming_normal": "he_normal",
        "kaiming_uniform": "he_uniform",
        "randn": "standard_normal",
    },
)
#: What ``init`` may be: an initialiser, or ``auto`` (He for ReLU-family layers, else Glorot).
INIT_CHOICES = ("auto", *INITIALIZERS)


def init_spec(spec: str) -> str:
    """The canonical spelling of an init setting, ``"auto"`` kept as it is."""
    return canonical(spec, INIT_CHOICES, "init", INITIALIZERS.aliases)


def init_name(spec: str, activation_name: str = "relu") -> str:
    """Canonical initialiser name; ``"auto"`` picks He for ReLU-family layers, else Glorot."""
    key = init_spec(spec)
    if key == "auto":
        return "he_normal" if "relu" in activation_name else "glorot_uniform"
    return key


def initial_parameters(sizes, init_names, seed):
    """Host float64 ``(W, b)`` pairs for each layer, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        INITIALIZERS[name](rng, fan_in, fan_out) for name, fan_in, fan_out in zip(init_names, sizes[:-1], sizes[1:])
    ]
