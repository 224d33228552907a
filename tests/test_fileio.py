"""Outputs never destroy what they name, and inputs never hang: every kind of path, every writer.

The sweep gives each writer (``atomic_write_bytes``, ``predict --out``, ``train --out``,
``train --history``) each kind of path: a new file, a file with its own permissions,
a symbolic link (to a file, dangling), a character device (a private twin of
/dev/null), a FIFO with a reader, a folder and a socket. A regular file is replaced
atomically and keeps its mode; a new one gets ``0666 & ~umask``; a link stays a link
and its target gets the data; a device or FIFO is streamed to and stays what it was;
a folder or a socket is refused with ``xpnet: error:`` before any work is done.
Then every reader is handed a FIFO, under a deadline: it must refuse it, not block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xpnet.cli import main
from xpnet.fileio import atomic_write_bytes

KINDS = ("new", "file", "symlink", "dangling", "device", "fifo", "folder", "socket")
WRITERS = ("library", "predict", "train", "history")
SUFFIX = {"library": ".bin", "predict": ".csv", "train": ".safetensors", "history": ".csv"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny dataset, inputs to predict and a model, in a folder of their own."""
    folder = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    np.savez(folder / "d.npz", X=X, y=(X[:, 0] > 0).astype(np.int32))
    np.savez(folder / "x.npz", X=X[:4])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["train", *_TRAIN, "--out", "m.safetensors"]) == 0
    return folder


_TRAIN = ["--dataset", "d.npz", "--layers", "4", "--epochs", "1", "--batch-size", "8", "--quiet"]


def _make(kind: str, path: Path) -> Path | None:
    """Put a ``kind`` of thing at ``path``; returns the file the data should land in, if any."""
    target = path.parent / "elsewhere" / f"target{path.suffix}"
    target.parent.mkdir(exist_ok=True)
    if kind == "file":
        path.write_bytes(b"old")
        path.chmod(0o640)
        return path
    if kind in ("symlink", "dangling"):
        if kind == "symlink":
            target.write_bytes(b"old")
            target.chmod(0o640)
        path.symlink_to(target)
        return target
    if kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's twin: never the real one
        except PermissionError:
            pytest.skip("making a character device needs root (CAP_MKNOD)")
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "folder":
        path.mkdir()
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    return path if kind == "new" else None


def _write(writer: str, path: Path, work: Path, dataset: str = "d.npz") -> int:
    if writer == "library":
        try:
            atomic_write_bytes(path, b"new data")
        except Exception as exc:
            return 2 if type(exc).__module__.startswith("xpnet") else 99
        return 0
    if writer == "predict":
        return main(["predict", str(work / "m.safetensors"), str(work / "x.npz"), "--out", str(path)])
    args = [*_TRAIN, "--dataset", str(work / dataset)]
    if writer == "train":
        return main(["train", *args, "--out", str(path)])
    return main(["train", *args, "--out", str(path.parent / "t.safetensors"), "--history", str(path)])


@contextlib.contextmanager
def _reader(kind: str, path: Path):
    """A ``cat`` draining the FIFO while the writer runs; yields a function giving what it read."""
    if kind != "fifo":
        yield lambda: None
        return
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    try:
        yield lambda: cat.communicate(timeout=20)[0]
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.communicate()


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_writer_on_every_kind_of_path(work, tmp_path, writer, kind, capsys):
    path = tmp_path / f"out{SUFFIX[writer]}"
    lands = _make(kind, path)
    before = os.lstat(path).st_mode if kind != "new" and kind != "dangling" else None
    with _reader(kind, path) as received:
        code = _write(writer, path, work, dataset="missing.npz" if kind in ("folder", "socket") else "d.npz")
        streamed = received()
    err = capsys.readouterr().err
    if kind in ("folder", "socket"):  # refused, before the (missing) dataset is even looked for
        assert code == 2 and "Traceback" not in err, err
        assert writer == "library" or (("--out" in err or "--history" in err) and "missing.npz" not in err), err
        assert os.lstat(path).st_mode == before
        assert kind != "folder" or not any(path.iterdir())
        return
    assert code == 0, err
    if kind == "symlink" or kind == "dangling":
        assert path.is_symlink() and Path(os.readlink(path)) == lands
    if before is not None:
        assert stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(before)  # a device or FIFO is not replaced
    if kind == "fifo":
        assert streamed  # the reader got the data
    if lands is not None:
        assert lands.read_bytes() not in (b"", b"old")
        want = 0o640 if kind in ("file", "symlink") else 0o666 & ~_umask()
        assert stat.S_IMODE(lands.stat().st_mode) == want


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022, 0o027, 0o077])
def test_new_files_take_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~mask


def test_predict_out_dash_prints_csv_and_train_refuses_it(work, capsysbinary):
    assert main(["predict", str(work / "m.safetensors"), str(work / "x.npz"), "--out", "-"]) == 0
    assert capsysbinary.readouterr().out.decode().splitlines()[0].startswith("index,label")
    assert main(["train", *_TRAIN, "--dataset", str(work / "d.npz"), "--out", "-"]) == 2
    assert b"--out -" in capsysbinary.readouterr().err


# -- inputs: a FIFO never blocks a reader ---------------------------------------------


class Blocked(BaseException):
    """Raised by ``_deadline`` (not an OSError, so no reader's error handling can swallow it)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() with an exception."""

    def expire(signum, frame):
        raise Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


READERS = {
    "evaluate's model": lambda w, f: ["evaluate", str(f)],
    "predict's model": lambda w, f: ["predict", str(f), str(w / "x.npz")],
    "predict's .npz input": lambda w, f: ["predict", str(w / "m.safetensors"), str(f)],
    "predict's IDX input": lambda w, f: ["predict", str(w / "m.safetensors"), str(f)],
    "an .npz dataset": lambda w, f: ["train", *_TRAIN, "--dataset", str(f), "--out", str(f.parent / "m.safetensors")],
    "a CSV dataset": lambda w, f: ["train", *_TRAIN, "--dataset", str(f), "--out", str(f.parent / "m.safetensors")],
    "--resume's checkpoint": lambda w, f: ["train", "--resume", str(f), "--out", str(f.parent / "m.safetensors")],
    "an IDX file in --data-dir": lambda w, f: ["train", *_TRAIN, "--dataset", "mnist", "--data-dir", str(f.parent)],
}
NAMES = {"predict's .npz input": "x.npz", "predict's IDX input": "x-idx3-ubyte", "an .npz dataset": "d.npz"}
NAMES |= {"a CSV dataset": "d.csv", "an IDX file in --data-dir": "train-images-idx3-ubyte.gz"}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_a_fifo_at_once(work, tmp_path, reader, capsys):
    fifo = tmp_path / NAMES.get(reader, "m.ckpt.safetensors")
    os.mkfifo(fifo)
    if reader == "an IDX file in --data-dir":  # the other three files are real; one of them is a FIFO
        for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (tmp_path / name).write_bytes(b"\0\0\x08\x01\0\0\0\0")
    with _deadline(5):
        code = main(READERS[reader](work, fifo))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("xpnet: error: ") and str(fifo.name) in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
