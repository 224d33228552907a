"""bench checks all it is given before the sweep: generated hostile history lines (every key of a
real line, every hostile JSON value of the metadata fuzz), non-regular history files, and each
option it used to trip on after minutes of measuring (--png, --profile, --compare)."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from tests.test_metadata import _DEEP, HOSTILE, _paths, _replaced
from xpnet.bench import cli as bench_cli
from xpnet.bench import history
from xpnet.bench.compare import compare, format_changes
from xpnet.bench.options import add_bench_arguments
from xpnet.errors import ConfigError, DataError, XpnetError

REAL = history.project_root() / "bench" / "history" / "amd-epyc-avx512-2c.jsonl"
_HUGE = "\x00HUGE\x00"  #: stands for an integer of 5,000 digits (beyond what json.dumps writes)
EXTRA = [_HUGE, "x" * 5000, -0.5, 0.0, {"median": "x", "spread": 0.1}, {"median": 1.0, "spread": None}]


def _small_line() -> dict:
    """The first stored run, cut to two rows and one device's ceilings (every kind of key stays)."""
    entry = json.loads(REAL.read_text().splitlines()[0])
    entry["rows"] = [row for row in entry["rows"] if row["impl"] == "xpnet"][:2]
    entry["ceilings"] = dict(list(entry["ceilings"].items())[:1])
    for ceiling in entry["ceilings"].values():
        ceiling["own"] = dict(list(ceiling["own"].items())[:1])
        ceiling["repeats"] = {k: dict(list(v.items())[:1]) for k, v in ceiling["repeats"].items()}
    return entry


def _cases():
    entry = _small_line()
    for path in _paths(entry):
        for value in [*HOSTILE, *EXTRA]:
            yield path, value


def test_every_hostile_value_at_every_key_is_refused_or_compared_without_a_crash(tmp_path):
    valid = _small_line()
    file, refused = tmp_path / "h.jsonl", 0
    for path, value in _cases():
        text = _replaced(valid, path, value).replace(json.dumps(_HUGE), "9" * 5000)
        file.write_text(text + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            (entry,) = history.read(file)
        except DataError:
            refused += 1
            continue
        for before, after in ((entry, valid), (valid, entry)):  # what the sweep's end does with it
            format_changes(compare(before, after), before, after)
        original = _at(valid, path)
        free = path[0] == "options"  # the sweep's options are recorded, never computed with
        if (
            _is_number(original)
            and not _is_number(value)
            and not free
            and not (value is None and path[-1] in _NULLABLE)
        ):
            pytest.fail(f"{path}: {str(value)[:40]} in place of a number was taken")
        assert value is not _DEEP and not (isinstance(value, str) and "\ud800" in value), path
    assert refused > 100


_NULLABLE = {"step_ms", "epoch_times", "cores", *history.FIGURES}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at(document, path):
    for step in path:
        document = document[step]
    return document


@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero", "dev-null", "missing"])
def test_a_history_that_is_not_a_regular_file_is_refused_before_the_sweep(tmp_path, monkeypatch, kind):
    path = {"fifo": tmp_path / "h.jsonl", "folder": tmp_path, "dev-zero": "/dev/zero", "dev-null": "/dev/null"}
    path = str(path.get(kind, tmp_path / "none.jsonl"))
    if kind == "fifo":
        os.mkfifo(path)
    for options in (["--compare", "--history", path], ["--history", path]):
        if kind in ("missing", "dev-null") and "--compare" not in options:
            continue  # a new history; /dev/null: streamed to, read as empty
        _refused_before_the_sweep(monkeypatch, options, (DataError, ConfigError))
    if kind == "fifo":
        assert stat.S_ISFIFO(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--png", "x.txt"], "--png"), (["--png", "plot"], "--png"), (["--png", "/dev/full"], "--png"),
        (["--profile", "0"], "--profile"), (["--profile=-5"], "--profile"), (["--profile", "abc"], "--profile"),
        (["--profile", ","], "--profile"), (["--repeats", "0"], "--repeats"), (["--warmup", "-1"], "--warmup"),
        (["--pause", "nan"], "--pause"), (["--pause", "-1"], "--pause"), (["--samples", "0"], "--samples"),
        (["--json", "/"], "--json"), (["--markdown", "/etc/passwd/x.md"], "--markdown"),
    ],
)  # fmt: skip
def test_every_option_is_checked_before_the_sweep(monkeypatch, options, message):
    assert message in str(_refused_before_the_sweep(monkeypatch, options, ConfigError))


def test_compare_without_a_history_is_refused_before_the_sweep(tmp_path, monkeypatch):
    error = _refused_before_the_sweep(monkeypatch, ["--compare", "--history", str(tmp_path / "no.jsonl")], DataError)
    assert "no benchmark history" in str(error)


def test_a_hostile_line_is_refused_before_the_sweep(tmp_path, monkeypatch):
    for value in ('"x"', "null", '"3"', "[" * 100_000 + "]" * 100_000, "9" * 5000):
        line = json.dumps(_small_line()).replace('"median": ', f'"median": {value}, "_": ', 1)
        (tmp_path / "h.jsonl").write_text(line.replace(', "_": ', ', "spread": 0.1, "_": ', 0) + "\n")
        _refused_before_the_sweep(monkeypatch, ["--compare", "--history", str(tmp_path / "h.jsonl")], DataError)


def test_the_plot_is_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from xpnet.bench import report

    def disk_full(self, fname, **_):
        if hasattr(fname, "write"):
            fname.write(b"partial")
        else:
            Path(fname).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    class Empty:
        rows, ceilings = [], {}

    target = tmp_path / "p.png"
    target.write_bytes(b"old plot")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(XpnetError):
        report.plot(Empty(), target)
    assert target.read_bytes() == b"old plot" and sorted(os.listdir(tmp_path)) == ["p.png"]


def _refused_before_the_sweep(monkeypatch, options, errors) -> XpnetError:
    def sweep(**_):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(bench_cli, "run_bench", sweep)
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(["--batch-sizes", "8", "--backends", "numpy", "--machine", "box", *options])
    with pytest.raises(errors) as caught:
        bench_cli.bench_main(args)
    return caught.value
