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


#: Advice in a message as the Python API spells it, and as the command line does.
_API_TO_COMMAND_LINE = (
    ('device="cpu"', "--device cpu"),
    ('device="cuda"', "--device cuda"),
    ('backend="torch"', "--backend torch"),
)


def for_command_line(message: str) -> str:
    """``message`` with the Python API's advice (``device="cpu"``) in the command line's words (``--device cpu``)."""
    for api, flag in _API_TO_COMMAND_LINE:
        message = message.replace(api, flag)
    return message
