"""Declarative checks for JSON from untrusted files: type, range, finiteness and length.

A schema is a tree of small nodes (``Int``, ``Number``, ``Text``, ``Bool``, ``Null``,
``ListOf``, ``Record``, ``Either``), each of which checks one value and says in words
what it expects. ``check(node, value, where)`` walks the tree and raises ``Invalid``
naming the key path (``checkpoint.state.epoch``, ``architecture.sizes[1]``) and what
was wrong, before any value reaches code that would trip over it (a string where a
number belongs, an integer of 400 digits, NaN, a list of a million layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from xpnet.checks import is_whole
from xpnet.errors import XpnetError

INT64_MAX = 2**63 - 1
#: Strings in model files are names and paths; nothing longer is meant.
MAX_TEXT = 4096


class Invalid(XpnetError):
    """A value broke its schema: ``where`` is the key path, ``problem`` what was wrong."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def describe_value(value: Any) -> str:
    """A short, safe description of any JSON value (no 400-digit reprs, no megabyte strings)."""
    if value is None or isinstance(value, bool):
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        digits = len(str(abs(value))) if value.bit_length() < 200 else int(value.bit_length() * 0.30103) + 1
        return str(value) if digits <= 24 else f"an integer of about {digits} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value[:40].encode("utf-8", "backslashreplace").decode("utf-8")
        return repr(shown) if len(value) <= 40 else f"a string of {len(value)} characters ({shown!r}...)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    if isinstance(value, dict):
        return f"an object with {len(value)} key{'s' * (len(value) != 1)}"
    return type(value).__name__


class Node:
    """One schema node: ``check`` returns the value or raises ``Invalid``."""

    def expects(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, where: str, problem: str | None = None) -> Invalid:
        return Invalid(where, problem or f"expected {self.expects()}, got {describe_value(value)}")


@dataclass(frozen=True)
class Int(Node):
    """A whole number (not a bool, not 1.0) in ``[low, high]``."""

    low: int = 0
    high: int = INT64_MAX

    def expects(self) -> str:
        return f"a whole number from {self.low} to {self.high}"

    def check(self, value, where):
        if not is_whole(value) or not self.low <= value <= self.high:
            raise self.fail(value, where)
        return value


@dataclass(frozen=True)
class Number(Node):
    """A real number (ints accepted) between ``low`` and ``high``; finite unless ``finite=False``.

    ``open_high`` excludes ``high`` itself, as in a rate in [0, 1). NaN is never accepted.
    """

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    finite: bool = True

    def expects(self) -> str:
        finite = "a finite number" if self.finite else "a number"
        if self.low == -math.inf and self.high == math.inf:
            return finite
        if self.high == math.inf:
            return f"{finite} {'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"{finite} in {left}{self.low:g}, {self.high:g}{right}"

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(value, where)
        try:
            number = float(value)
        except OverflowError:
            raise self.fail(value, where) from None
        if math.isnan(number) or (self.finite and math.isinf(number)):
            raise self.fail(value, where)
        below = number <= self.low if self.open_low else number < self.low
        above = number >= self.high if self.open_high else number > self.high
        if below or above:
            raise self.fail(value, where)
        return number


@dataclass(frozen=True)
class Text(Node):
    """A string of 1..``max_len`` characters (0 allowed with ``empty=True``), valid Unicode.

    ``choices`` limits it to those names (a registry is read when checked, so a name added
    to it later is accepted); ``parse`` is called on it and any
    ``XpnetError`` it raises (an unknown activation name, say) is the problem reported.
    """

    choices: Collection[str] | None = None
    max_len: int = MAX_TEXT
    empty: bool = False
    parse: Callable[[str], Any] | None = None
    what: str = "a string"

    def expects(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"{self.what} of {0 if self.empty else 1} to {self.max_len} characters"

    def check(self, value, where):
        if not isinstance(value, str) or len(value) > self.max_len or (not value and not self.empty):
            raise self.fail(value, where)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.fail(value, where, f"{describe_value(value)} is not valid Unicode (a lone surrogate)") from None
        if self.choices is not None and value not in self.choices:
            raise self.fail(value, where)
        if self.parse is not None:
            try:
                self.parse(value)
            except XpnetError as exc:
                raise self.fail(value, where, str(exc)) from None
        return value


def Bool() -> Custom:
    """true or false (not 0 or 1)."""
    return Custom("true or false", lambda value: isinstance(value, bool))


def Null() -> Custom:
    """null alone."""
    return Custom("null", lambda value: value is None)


@dataclass(frozen=True)
class ListOf(Node):
    """A list of ``min_len``..``max_len`` items, each checked by ``item``."""

    item: Node
    min_len: int = 0
    max_len: int = 1_000_000

    def expects(self) -> str:
        return f"a list of {self.min_len} to {self.max_len} items, each {self.item.expects()}"

    def check(self, value, where):
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            raise self.fail(value, where)
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Either(Node):
    """The first of ``options`` that accepts the value; the message lists them all."""

    options: tuple[Node, ...]

    def expects(self) -> str:
        return " or ".join(option.expects() for option in self.options)

    def check(self, value, where):
        problems = []
        for option in self.options:
            try:
                return option.check(value, where)
            except Invalid as exc:
                problems.append(exc)
        # A value of the right shape whose inside is wrong: name the inside (sizes[3], not sizes).
        deeper = [exc for exc in problems if exc.where != where]
        if len(deeper) == 1:
            raise deeper[0]
        raise self.fail(value, where)


#: A rule across the keys of one record: returns ``(key, problem)`` when broken, else None.
Rule = Callable[[dict], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Record(Node):
    """A JSON object with the keys ``fields`` names, each checked by its node.

    Keys in ``optional`` may be missing. ``extra`` checks keys the schema does not
    name (None refuses them). ``rules`` check relations between keys afterwards.
    """

    fields: Mapping[str, Node]
    optional: frozenset[str] = frozenset()
    extra: Node | None = None
    rules: tuple[Rule, ...] = field(default=())
    what: str = "an object"

    def expects(self) -> str:
        return self.what if self.what != "an object" else f"an object with the keys {', '.join(self.fields)}"

    def check(self, value, where):
        if not isinstance(value, dict) or (self.extra is None and value and not set(value) & set(self.fields)):
            raise self.fail(value, where)  # not even the shape of this record (in an Either, another may fit)
        missing = [key for key in self.fields if key not in value and key not in self.optional]
        if missing:
            raise Invalid(_join(where, missing[0]), "is missing")
        checked = {}
        for key, item in value.items():
            node = self.fields.get(key, self.extra)
            if node is None:
                raise Invalid(_join(where, key), f"is not a key xpnet knows here (expected {', '.join(self.fields)})")
            checked[key] = node.check(item, _join(where, key))
        for rule in self.rules:
            broken = rule(checked)
            if broken is not None:
                raise Invalid(_join(where, broken[0]), broken[1])
        return checked


def _join(where: str, key: str) -> str:
    shown = key if len(key) <= 40 else f"{key[:40]}..."
    return f"{where}.{shown}" if where else shown


@dataclass(frozen=True)
class Custom(Node):
    """A check written as a function: ``test(value)`` is True for good values."""

    description: str
    test: Callable[[Any], bool]

    def expects(self) -> str:
        return self.description

    def check(self, value, where):
        try:
            good = self.test(value)
        except (TypeError, ValueError, OverflowError, XpnetError):
            good = False
        if not good:
            raise self.fail(value, where)
        return value


def check(node: Node, value: Any, where: str = "") -> Any:
    """``value`` checked against ``node``; raises ``Invalid`` naming the first bad key."""
    return node.check(value, where)


def deepest_key(text: str, where: str = "", limit: int = 200) -> str:
    """The key path at which JSON ``text`` first nests deeper than ``limit``.

    For the message when ``json.loads`` gives up on deep nesting (a RecursionError
    says nothing of where): the text is scanned, not parsed, so any depth is fine.
    """
    stack: list[list] = []  # per open container: [bracket, current key or index]
    last_string, i = "", 0
    while i < len(text) and len(stack) <= limit:
        char = text[i]
        if char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            last_string, i = text[i + 1 : end], end + 1
            continue
        if char in "[{":
            stack.append([char, 0 if char == "[" else ""])
        elif char in "]}" and stack:
            stack.pop()
        elif char == ":" and stack and stack[-1][0] == "{":
            stack[-1][1] = last_string
        elif char == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        i += 1
    keys = [key for _, key in stack[:-1]]
    named = [i for i, key in enumerate(keys) if isinstance(key, str)]
    path = where
    for key in keys[: named[-1] + 2 if named else 1]:  # up to the last name and one index after it
        path = f"{path}[{key}]" if isinstance(key, int) else _join(path, key)
    return path
