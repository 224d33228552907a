"""One spelling rule for every name a user types: activations, losses, backends, recipes, ...

Each kind of name has one canonical spelling, the one xpnet writes in files and lists
in messages (``cross_entropy``, ``warmup-cosine``, ``array-api-strict``). Users may type
any case and swap ``-`` for ``_``: ``Cross-Entropy``, ``WARMUP_COSINE`` and
``array_api_strict`` all name the same thing. Unknown names are refused with the
choices listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xpnet.errors import ConfigError


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def find(name, choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The canonical spelling of ``name`` among ``choices`` (or an alias of one), else None."""
    if not isinstance(name, str):
        return None
    key = _key(name)
    for choice in choices:
        if _key(choice) == key:
            return choice
    for alias, choice in (aliases or {}).items():
        if _key(alias) == key:
            return choice
    return None


def canonical(name, choices: Iterable[str], what: str, aliases: Mapping[str, str] | None = None) -> str:
    """The canonical spelling of ``name``; a ConfigError listing ``choices`` if it names none.

    ``what`` names the kind of thing in the message (``"loss"``, ``"backend"``);
    ``aliases`` maps other accepted names (``"ce"``) to their canonical choice.
    """
    choices = tuple(choices)
    found = find(name, choices, aliases)
    if found is None:
        raise ConfigError(f"unknown {what} {name!r}; choose from {', '.join(choices)}")
    return found


class Registry(Mapping):
    """One kind of user-facing name (activations, losses, optimizers, ...): canonical name -> entry.

    A new entry is one line here: its canonical spelling and what it names (a class, a
    factory, a record). Lookups go through the spelling rule above, so choices, help
    text and the error for an unknown name all come from the one table.
    """

    def __init__(self, what: str, entries: Mapping, aliases: Mapping[str, str] | None = None):
        self.what = what
        self._entries = dict(entries)
        self.aliases = dict(aliases or {})

    def __getitem__(self, name: str):
        return self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def canonical(self, name) -> str:
        """The canonical spelling of ``name``; a ConfigError listing the choices if it names none."""
        return canonical(name, self._entries, self.what, self.aliases)

    def lookup(self, name):
        """The entry ``name`` (any accepted spelling or alias) names."""
        return self._entries[self.canonical(name)]

    def listing(self) -> str:
        """The choices for help text: ``a, b, c``."""
        return ", ".join(self._entries)
