"""TensorBoard logs: the event file holds each epoch's metrics, read back from its records."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason='needs tensorboardX (pip install "xpnet[tensorboard]")')

from tensorboardX.proto.event_pb2 import Event

import xpnet
from xpnet.cli import main
from xpnet.errors import XpnetError
from xpnet.tensorboard import TensorBoardWriter


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``logdir``: tag -> [(step, value), ...].

    An event file is TFRecord framing around protobuf ``Event`` messages: a little-endian
    uint64 length, a 4-byte CRC, the message, a 4-byte CRC.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_each_epoch_of_fit_lands_in_the_event_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    net = xpnet.MLP([4, 8, 2], seed=0)
    with TensorBoardWriter(tmp_path / "run") as writer:
        history = net.fit(X, y, epochs=3, batch_size=20, validation_data=(X[:50], y[:50]), on_epoch_end=writer)
    scalars = read_scalars(tmp_path / "run")
    assert set(scalars) == {
        "loss/train",
        "loss/validation",
        "accuracy/train",
        "accuracy/validation",
        "learning_rate",
        "throughput/samples_per_s",
    }
    assert [step for step, _ in scalars["loss/train"]] == [1, 2, 3]
    for (_, logged), record in zip(scalars["loss/validation"], history.records):
        assert logged == pytest.approx(record["val_loss"], rel=1e-6)  # stored as float32


def test_without_tensorboardx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(XpnetError, match=r'pip install "xpnet\[tensorboard\]"'):
        TensorBoardWriter(tmp_path)


def test_train_tensorboard_writes_the_run_and_refuses_early_without_tensorboardx(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    np.savez(tmp_path / "data.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    args = ["train", "--dataset", str(tmp_path / "data.npz"), "--layers", "8", "--epochs", "2", "--quiet"]
    args += ["--out", str(tmp_path / "m.safetensors"), "--tensorboard", str(tmp_path / "runs" / "a")]
    assert main(args) == 0
    scalars = read_scalars(tmp_path / "runs" / "a")
    assert [step for step, _ in scalars["accuracy/validation"]] == [1, 2]
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    (tmp_path / "m.safetensors").unlink()
    assert main(args) == 2  # refused before training: no model written
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("errno", [28, 5, 122, 30])  # ENOSPC, EIO, EDQUOT, EROFS
@pytest.mark.parametrize("failing_write", [1, 2, 4, 8])  # the first flush, epochs 1 and 3, the close
def test_a_disk_that_fills_ends_the_run_as_an_error_not_a_traceback(tmp_path, monkeypatch, capfd, errno, failing_write):
    from tensorboardX import record_writer

    writes = {"n": 0}
    real_flush = record_writer.RecordWriter.flush

    def flush(self):
        writes["n"] += 1
        if writes["n"] >= failing_write:
            raise OSError(errno, "simulated")
        return real_flush(self)

    monkeypatch.setattr(record_writer.RecordWriter, "flush", flush)
    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    args = ["train", "--dataset", str(tmp_path / "d.npz"), "--layers", "4", "--epochs", "6", "--quiet"]
    args += ["--out", str(tmp_path / "m.safetensors"), "--tensorboard", str(tmp_path / "tb")]
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.startswith("xpnet: error: --tensorboard") and "Traceback" not in err and "Exception" not in err
