"""The records a sweep produces: one ``Row`` per table line, one ``BenchResult`` per run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One implementation on one backend/device at one batch size: the figures of a table line."""

    impl: str
    backend: str
    device: str
    batch_size: int
    samples_per_s: float
    step_ms: float
    gflops: float
    pct_peak: float
    pct_own: float
    peak_memory: int | None
    epoch_times: list[float] = field(default_factory=list)
    vs_torch_eager: float | None = None
    vs_direct: float | None = None
    vs_step: float | None = None  #: xpnet's fit epochs against its own step in a bare loop (``xpnet-step``)
    #: seconds the runner spent compiling (tracing + XLA's compile, timed where it happens:
    #: ``xpnet.compiled.TimedJit``), once, in the untimed warm-up epoch; None where nothing is compiled
    compile_s: float | None = None


@dataclass
class BenchResult:
    """A whole sweep: rows, the ceilings measured beside them, and where and how it ran."""

    rows: list[Row]
    #: target label -> {"peak": GFLOP/s (median of all its repeats), "own": {batch: GFLOP/s},
    #: "repeats": {"peak": {batch: [GFLOP/s of each repeat]}, "own": {batch: [...]}}}
    ceilings: dict
    skipped: list[str]
    environment: dict
    options: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        """The result ``to_json`` wrote, parsed. JSON keys are strings, so the ceilings' batch sizes
        come back as ints, as the sweep made them (``history.entry_from_result`` looks them up by row)."""
        rows = [Row(**row) for row in data["rows"]]
        ceilings = {label: _batches_as_ints(ceiling) for label, ceiling in data["ceilings"].items()}
        return cls(**dict(data, rows=rows, ceilings=ceilings))


def _batches_as_ints(ceiling: dict) -> dict:
    """One target's ceilings with its per-batch tables keyed by int batch size again."""

    def by_batch(table: dict) -> dict:
        return {int(batch): value for batch, value in table.items()}

    out = dict(ceiling, own=by_batch(ceiling["own"]))
    if "repeats" in ceiling:
        out["repeats"] = {kind: by_batch(table) for kind, table in ceiling["repeats"].items()}
    return out
