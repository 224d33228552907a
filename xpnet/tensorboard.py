"""TensorBoard event files of a training run: each epoch's metrics as scalars.

``python -m xpnet train --tensorboard runs/NAME`` writes them; ``tensorboard --logdir
runs`` shows them. The writer is tensorboardX's (``pip install "xpnet[tensorboard]"``):
an 88 kB pure-Python wheel needing only NumPy, protobuf and packaging, where TensorBoard's
own package brings its web server and a dozen dependencies along.
"""

from __future__ import annotations

import os

from xpnet.errors import XpnetError

#: History record key -> TensorBoard tag; training and validation curves share a chart.
TAGS = {
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "lr": "learning_rate",
    "samples_per_s": "throughput/samples_per_s",
}


def summary_writer_class():
    """tensorboardX's ``SummaryWriter``, or an error saying how to install it (an optional extra)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise XpnetError(
            'writing TensorBoard logs needs tensorboardX; install it with: pip install "xpnet[tensorboard]"'
        ) from None
    return SummaryWriter


class TensorBoardWriter:
    """Call it with the ``History`` after each epoch (``fit``'s ``on_epoch_end``); ``close`` at the end."""

    def __init__(self, logdir: str | os.PathLike):
        SummaryWriter = summary_writer_class()
        try:
            self.writer = SummaryWriter(logdir=str(logdir))
        except OSError as exc:
            raise XpnetError(f"--tensorboard {logdir}: cannot write there ({exc.strerror or exc})") from None
        self.logdir = self.writer.logdir

    def __call__(self, history) -> None:
        record = history.records[-1]
        for key, tag in TAGS.items():
            if key in record:
                self.writer.add_scalar(tag, float(record[key]), global_step=record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
