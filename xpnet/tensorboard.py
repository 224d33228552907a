"""TensorBoard event files of a training run: each epoch's metrics as scalars.

``python -m xpnet train --tensorboard runs/NAME`` writes them; ``tensorboard --logdir
runs`` shows them. The writer is tensorboardX's (``pip install "xpnet[tensorboard]"``):
an 88 kB pure-Python wheel needing only NumPy, protobuf and packaging, where TensorBoard's
own package brings its web server and a dozen dependencies along.
"""

from __future__ import annotations

import contextlib
import os
import time

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
    """tensorboardX's synchronous ``EventsWriter``, or an error saying how to install it (an optional extra).

    Not its ``SummaryWriter``: that one writes from a thread of its own and closes again at exit,
    so a disk that fills would end the run with tracebacks from both; here every write happens in
    the caller's thread, where its failure is an ``XpnetError``.
    """
    try:
        import tensorboardX  # noqa: F401 - the package first: its submodules may be cached without it
        from tensorboardX.event_file_writer import EventsWriter
    except ImportError:
        raise XpnetError(
            'writing TensorBoard logs needs tensorboardX; install it with: pip install "xpnet[tensorboard]"'
        ) from None
    return EventsWriter


class TensorBoardWriter:
    """Call it with the ``History`` after each epoch (``fit``'s ``on_epoch_end``); ``close`` at the end."""

    def __init__(self, logdir: str | os.PathLike):
        EventsWriter = summary_writer_class()
        self.logdir = str(logdir)
        with self._writing("cannot write there"):
            os.makedirs(self.logdir, exist_ok=True)
            self.writer = EventsWriter(os.path.join(self.logdir, "events"))
            self.writer.flush()

    def __call__(self, history) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        record = history.records[-1]
        with self._writing():
            for key, tag in TAGS.items():
                if key in record:
                    summary = scalar(tag, float(record[key]))
                    self.writer.write_event(Event(wall_time=time.time(), step=record["epoch"], summary=summary))
            self.writer.flush()

    def close(self) -> None:
        with self._writing():
            self.writer.close()

    @contextlib.contextmanager
    def _writing(self, problem: str = "cannot write the event file"):
        """A full disk, a lost folder: ``xpnet: error:`` naming the folder, as every other output's failure."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or exc
            raise XpnetError(
                f"--tensorboard {self.logdir}: {problem} ({reason}); free some space or choose another folder"
            ) from None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
