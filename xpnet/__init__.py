"""xpnet: dense networks trained by hand-written backpropagation on any array-API library."""

from xpnet import recipes
from xpnet._version import __version__
from xpnet.backend import Backend, get_backend
from xpnet.checkpoint import load_model
from xpnet.errors import (
    BackendError,
    ConfigError,
    DataError,
    DivergenceError,
    MemoryLimitError,
    ModelFileError,
    XpnetError,
)
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.train import History

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "Backend",
    "BackendError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "History",
    "MemoryLimitError",
    "ModelFileError",
    "XpnetError",
    "__version__",
    "get_backend",
    "load_model",
    "recipes",
]
