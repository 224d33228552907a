"""The schema of a benchmark history line (``xpnet.bench.history``): untrusted JSON, checked as a
model file's metadata is (``xpnet.schema``), before any figure of it is used.

A history file may be edited by hand, merged by git or come from another machine; a line
with a string where a median belongs, a 5,000-digit integer, deep nesting or a lone
surrogate is refused naming the line and the key, before the sweep starts.
"""

from __future__ import annotations

from xpnet.schema import INT64_MAX, Bool, Either, Int, ListOf, Null, Number, Record, Text

SCHEMA = 1
#: The figures a history row may carry, the ratios (which compare across runs) first.
FIGURES = ("vs_torch_eager", "vs_direct", "vs_step", "pct_own", "pct_peak", "samples_per_s")
ROW_KEY = ("impl", "backend", "device", "batch_size")
#: Most rows, repeats and batch sizes a line may hold: far beyond any sweep.
MAX_ITEMS = 100_000

_NAME = Text(max_len=200)
_MAYBE_NAME = Either((Null(), Text(max_len=1000, empty=True)))
_POSITIVE = Number(0.0, open_low=True)
_NON_NEGATIVE = Number(0.0)
_FIGURE = Record({"median": _NON_NEGATIVE, "spread": _NON_NEGATIVE}, what="{'median': m, 'spread': s}")
_TIMES = Either((Null(), ListOf(_NON_NEGATIVE, 0, MAX_ITEMS)))
_OPTION = Either((Null(), Bool(), Number(), _NAME, ListOf(Either((Number(), _NAME)), 0, MAX_ITEMS)))
_PER_BATCH = Record({}, extra=_NON_NEGATIVE, what="an object of batch size -> number")
_REPEATS_PER_BATCH = Record({}, extra=_TIMES, what="an object of batch size -> list of numbers")
_CEILING = Record(
    {
        "own": _PER_BATCH,
        "peak": _NON_NEGATIVE,
        "repeats": Record({"own": _REPEATS_PER_BATCH, "peak": _REPEATS_PER_BATCH}),
    },
    optional=frozenset({"repeats"}),
)
_LOAD = Either((Null(), ListOf(_NON_NEGATIVE, 0, 3)))

ROW = Record(
    {
        "impl": _NAME,
        "backend": _NAME,
        "device": _NAME,
        "batch_size": Int(1, INT64_MAX),
        "repeats": Int(0, MAX_ITEMS),
        "step_ms": Either((Null(), _NON_NEGATIVE)),
        "compile_s": Either((Null(), _NON_NEGATIVE)),  # seconds compiling, once (JAX); null where none
        "epoch_times": _TIMES,
        **{name: Either((Null(), _FIGURE)) for name in FIGURES},
    },
    optional=frozenset({"repeats", "step_ms", "compile_s", "epoch_times", *FIGURES}),
    what="a history row",
)

LINE = Record(
    {
        "schema": Int(SCHEMA, SCHEMA),
        "source": _MAYBE_NAME,
        "commit": _MAYBE_NAME,
        "dirty": Either((Null(), Bool())),
        "date": _MAYBE_NAME,
        "machine": _MAYBE_NAME,
        "cpu": _MAYBE_NAME,
        "isa": _MAYBE_NAME,  # the widest vector instructions (environment.vector_isa); lines before it lack it
        "cores": Either((Null(), Int(1, 2**20))),
        "gpu": _MAYBE_NAME,
        "loadavg": Either((Null(), Record({"start": _LOAD, "end": _LOAD}, optional=frozenset({"start", "end"})))),
        "versions": Either((Null(), Record({}, extra=_MAYBE_NAME, what="an object of library -> version"))),
        "options": Either((Null(), Record({}, extra=_OPTION, what="an object of the sweep's options"))),
        "ceilings": Either((Null(), Record({}, extra=_CEILING, what="an object of backend/device -> ceilings"))),
        "rows": ListOf(ROW, 0, MAX_ITEMS),
    },
    optional=frozenset(
        {
            "source",
            "commit",
            "dirty",
            "date",
            "machine",
            "cpu",
            "isa",
            "cores",
            "gpu",
            "loadavg",
            "versions",
            "options",
            "ceilings",
        }
    ),
    what="a benchmark history line",
)
