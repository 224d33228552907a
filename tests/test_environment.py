"""Environments and options at the edges: refused by name, never a traceback.

The sweep crosses every way a dataset folder is named (``--data-dir``, ``XPNET_DATA``,
``XDG_CACHE_HOME``, the home folder) with what can be wrong with it (``~nosuchuser``,
no ``HOME``, no password entry for the user, as in a container run with ``--user
12345``), for training on a named dataset and for the library's loader. Each run
trains (the IDX files are found elsewhere) or ends with ``xpnet: error:`` naming the
variable or option at fault. Then the bench options that used to crash, or fail only
after the whole sweep: each is refused before the sweep starts.
"""

from __future__ import annotations

import os
import pwd
from urllib.error import URLError

import numpy as np
import pytest

import xpnet.bench.cli
import xpnet.data.datasets
from xpnet.cli import main
from xpnet.data import load_dataset, write_idx
from xpnet.errors import XpnetError

BAD_PATH = "~nosuchuser-xpnet/data"
#: (what is wrong, how to set it up, the name an error must give)
ENVIRONMENTS = {
    "--data-dir ~nosuchuser": ({"data_dir": BAD_PATH}, "--data-dir"),
    "XPNET_DATA ~nosuchuser": ({"XPNET_DATA": BAD_PATH}, "XPNET_DATA"),
    "XDG_CACHE_HOME ~nosuchuser": ({"XDG_CACHE_HOME": BAD_PATH}, "XDG_CACHE_HOME"),
    "no HOME": ({"HOME": None}, "HOME"),
    "no HOME, no password entry": ({"HOME": None, "no passwd": True}, "HOME"),
    "empty HOME, no password entry": ({"HOME": "", "no passwd": True}, "HOME"),
    "XDG_CACHE_HOME relative": ({"XDG_CACHE_HOME": "cache"}, "XDG_CACHE_HOME"),
}

#: Where a case with no data sends the search when its error does not name the variable: the folder
#: the variable led to, which the "not found" error lists (HOME unset: the password entry's home;
#: HOME empty: Python reads it as "/"; XDG_CACHE_HOME relative: relative to the working folder).
SEARCHED = {
    "no HOME": f"{pwd.getpwuid(os.getuid()).pw_dir.rstrip('/')}/.cache/xpnet/mnist",
    "empty HOME, no password entry": "\n  - /.cache/xpnet/mnist\n",
    "XDG_CACHE_HOME relative": "\n  - cache/xpnet/mnist\n",
}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A tiny MNIST-shaped dataset in a folder of its own."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return folder


def _environment(monkeypatch, setup: dict) -> str | None:
    """Apply ``setup``; return the --data-dir it asks for, if any."""
    for name in ("XPNET_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in setup.items():
        if name == "no passwd":
            monkeypatch.setattr(pwd, "getpwuid", _no_entry)
        elif name != "data_dir" and value is None:
            monkeypatch.delenv(name, raising=False)
        elif name != "data_dir":
            monkeypatch.setenv(name, value)

    def offline(*args, **kwargs):
        raise URLError("no network in the tests")

    monkeypatch.setattr(xpnet.data.datasets, "urlopen", offline)
    return setup.get("data_dir")


def _no_entry(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")


@pytest.mark.parametrize("where", ["given", "missing"])
@pytest.mark.parametrize("case", ENVIRONMENTS)
def test_every_bad_environment_trains_or_names_the_culprit(idx_dir, tmp_path, monkeypatch, capsys, case, where):
    setup, culprit = ENVIRONMENTS[case]
    monkeypatch.chdir(tmp_path)
    data_dir = _environment(monkeypatch, setup)
    args = ["train", "--dataset", "mnist", "--layers", "8", "--epochs", "1", "--quiet", "--out", "m.safetensors"]
    if where == "given" and data_dir is None:  # the data is there: only the broken variable stands in the way
        args += ["--data-dir", str(idx_dir)]
    elif data_dir is not None:
        args += ["--data-dir", data_dir]
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("xpnet: error: ") and "Traceback" not in err, err
        assert culprit in err or SEARCHED[case] in err, err
    with pytest.raises(XpnetError) if code == 2 else _nothing():
        load_dataset("mnist", data_dir=data_dir or (str(idx_dir) if where == "given" else None), progress=False)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_no_home_at_all_still_finds_data_given_elsewhere(idx_dir, monkeypatch):
    _environment(monkeypatch, {"HOME": None, "no passwd": True})
    monkeypatch.setenv("XPNET_DATA", str(idx_dir))
    assert load_dataset("mnist", progress=False).X_train.shape == (60, 784)


# -- bench options: refused before the sweep starts -------------------------------------


BENCH_OPTIONS = {
    "negative --samples": (["--samples", "-5"], "--samples"),
    "negative --gemm-size": (["--gemm-size", "-1"], "--gemm-size"),
    "--json is a folder": (["--json", "{tmp}"], "--json"),
    "--markdown is a folder": (["--markdown", "{tmp}"], "--markdown"),
    "missing --notes": (["--markdown", "{tmp}/r.md", "--notes", "{tmp}/missing.md"], "--notes"),
    "--notes is a FIFO": (["--markdown", "{tmp}/r.md", "--notes", "{tmp}/fifo"], "fifo"),
    "huge --batch-sizes": (["--batch-sizes", "16,100000000"], "--batch-sizes 100000000"),
    "huge --gemm-size": (["--gemm-size", "1000000"], "memory limit"),
}


@pytest.mark.parametrize("case", BENCH_OPTIONS)
def test_bench_refuses_bad_options_before_the_sweep(tmp_path, monkeypatch, capsys, case):
    def sweep(**options):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(xpnet.bench.cli, "run_bench", sweep)
    os.mkfifo(tmp_path / "fifo")
    args, culprit = BENCH_OPTIONS[case]
    code = main(["bench", *(arg.format(tmp=tmp_path) for arg in args)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("xpnet: error: ") and culprit in err, err
