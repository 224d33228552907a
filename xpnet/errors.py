"""One family of exceptions: every failure a user can cause is an ``XpnetError``.

The CLI prints these as ``xpnet: error: ...`` and exits 2; anything else escaping
is a bug and shows its traceback.
"""


class XpnetError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class ConfigError(XpnetError, ValueError):
    """An argument or setting has a value xpnet cannot use."""


class BackendError(XpnetError):
    """The requested array library or device is not available."""


class DataError(XpnetError):
    """A data file is missing, malformed or inconsistent."""


class ModelFileError(XpnetError):
    """A model or checkpoint file is missing, malformed or not an xpnet model."""


class MemoryLimitError(XpnetError):
    """A run, a file or a network would need more memory than the limit allows (``xpnet.memory``)."""


class DivergenceError(XpnetError):
    """Training produced a NaN or infinite loss."""


class RanksDifferError(ConfigError):
    """The ranks of a data-parallel job were started on different data or settings.

    Every rank raises it together, after comparing notes, so the job can end cleanly.
    """
