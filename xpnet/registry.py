"""The registry of user-facing names: every kind of name a user types, in one table of tables.

Each kind is a ``names.Registry`` kept beside what it names (a new activation is its class
plus one line in ``ACTIVATIONS``, a new optimizer its class plus one line in ``OPTIMIZERS``,
a new layer kind its module plus one line in ``NORMS``); this module gathers them, so the
CLI's choices and help, the settings' checks and the tests read every kind from one place.
All of them accept any case and ``-`` for ``_`` (``xpnet.names``), and refuse an unknown
name listing the choices.
"""

from __future__ import annotations

from xpnet.activations import ACTIVATIONS
from xpnet.backend import BACKENDS as _BACKEND_NAMES
from xpnet.init import INITIALIZERS
from xpnet.layers import NORMS
from xpnet.losses import LOSSES
from xpnet.names import Registry
from xpnet.optim import OPTIMIZERS, SCHEDULES
from xpnet.precision import PRECISIONS
from xpnet.train import MONITORS

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "INITIALIZERS",
    "KINDS",
    "LOSSES",
    "MONITORS",
    "NORMS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
]

#: The array libraries by name (their classes are the backend package's to resolve).
BACKENDS = Registry("backend", {name: name for name in _BACKEND_NAMES})

#: Every kind of user-facing name: the registry for each.
KINDS: dict[str, Registry] = {
    registry.what: registry
    for registry in (
        ACTIVATIONS,
        LOSSES,
        OPTIMIZERS,
        SCHEDULES,
        INITIALIZERS,
        PRECISIONS,
        MONITORS,
        NORMS,
        BACKENDS,
    )
}
