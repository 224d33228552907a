"""A recipe trained in PyTorch eager: the peer ``scripts/time_to_accuracy.py`` times xpnet against.

    python -m xpnet.bench.torch_recipe --recipe default --seed 0

The recipe's own settings, written the way a PyTorch user writes a training loop
(``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU``, ``F.cross_entropy`` with
``label_smoothing``, ``torch.optim``) and kept identical to xpnet's run wherever the
two can agree: the same data loader, train/validation split and input scaling; the
same initial weights (xpnet's seeded initialiser, copied into the ``nn.Linear``
layers); weight decay on the weights only; the learning rate set before every step
from the same schedule function; the same per-epoch permutation and batch size (the
``n % batch_size`` left-over samples sit the epoch out, as in ``fit``); the weights
of the best epoch by the recipe's ``monitor`` kept; the model saved at the end.
``tests/test_bench.py`` holds the two to the same weights after a short run.
Prints one JSON line: test accuracy, the selected epoch and the seconds spent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xpnet.build import build_network
from xpnet.data import load_dataset, train_val_split
from xpnet.errors import ConfigError
from xpnet.optim import get_schedule
from xpnet.run import resolve_settings
from xpnet.scaling import Scaling

#: Evaluation runs in chunks of this many samples, as xpnet's ``evaluate`` does.
EVAL_CHUNK = 4096


def check_supported(settings: dict) -> None:
    """Refuse settings this twin does not reproduce (it covers ReLU classifiers)."""
    wanted = {"activation": "relu", "loss": "cross_entropy"}
    for key, value in wanted.items():
        if str(settings.get(key)).replace("-", "_") != value:
            raise ConfigError(f"the PyTorch twin reproduces {key} {value!r} only, not {settings.get(key)!r}")
    if settings.get("norm", "none") != "none":
        raise ConfigError(f"the PyTorch twin reproduces networks without a norm, not norm {settings['norm']!r}")
    if settings.get("output") not in (None, "softmax"):
        raise ConfigError(f"the PyTorch twin reproduces a softmax output only, not {settings['output']!r}")
    for key in ("sample_weight", "class_weight"):
        if settings.get(key) is not None:
            raise ConfigError(f"the PyTorch twin reproduces unweighted training only, not {key} {settings[key]!r}")


def build_model(settings: dict, sizes: list[int]) -> nn.Sequential:
    """``nn.Sequential`` of Linear/ReLU (and Dropout) holding xpnet's initial weights for this seed."""
    net = build_network({**settings, "dtype": "float32", "precision": "float32"}, sizes[0], sizes[-1])
    state = net.state_dict()  # "layers.{i}.weight" / "layers.{i}.bias", torch's own layout
    dtype = getattr(torch, settings["dtype"])
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(state[f"layers.{i}.weight"]))
            linear.bias.copy_(torch.from_numpy(state[f"layers.{i}.bias"]))
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if settings["dropout"]:
                layers.append(nn.Dropout(settings["dropout"]))
    return nn.Sequential(*layers)


def build_optimizer(settings: dict, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer; weight decay on the weights (2-D parameters) only, as xpnet's."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": settings["weight_decay"]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    name, lr = settings["optimizer"], settings["lr"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings["momentum"], nesterov=settings["nesterov"])
    raise ConfigError(f"the PyTorch twin has no optimizer {name!r}")


class Inputs:
    """Raw inputs kept as they came (uint8 pixels), cast and scaled batch by batch, as xpnet does."""

    def __init__(self, X: np.ndarray, scaling: Scaling, dtype):
        self.X = torch.from_numpy(np.ascontiguousarray(X))
        self.dtype = dtype
        shift = np.asarray(scaling.shift, dtype=np.float64)
        self.shift = None if not shift.any() else torch.as_tensor(shift, dtype=dtype)  # x - 0 is a wasted pass
        self.scale = torch.as_tensor(np.asarray(scaling.scale, dtype=np.float64), dtype=dtype)

    def __len__(self) -> int:
        return self.X.shape[0]

    def batch(self, rows) -> torch.Tensor:
        x = self.X[rows].to(self.dtype)
        if self.shift is not None:
            x.sub_(self.shift)
        return x.mul_(self.scale)


def evaluate(model: nn.Module, inputs: Inputs, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (true labels, no smoothing) and accuracy over a whole set."""
    model.eval()
    loss_sum = correct = 0.0
    with torch.inference_mode():
        for start in range(0, len(inputs), EVAL_CHUNK):
            rows = slice(start, start + EVAL_CHUNK)
            logits = model(inputs.batch(rows))
            loss_sum += F.cross_entropy(logits, y[rows], reduction="sum").item()
            correct += (logits.argmax(dim=1) == y[rows]).sum().item()
    model.train()
    return loss_sum / len(inputs), correct / len(inputs)


def train_epoch(model, optimizer, inputs: Inputs, y: torch.Tensor, settings: dict, epoch: int, rng) -> float:
    """One epoch of steps over a fresh seeded permutation; returns the mean training loss."""
    size, epochs = settings["batch_size"], settings["epochs"]
    steps = len(inputs) // size
    order = torch.from_numpy(rng.permutation(len(inputs)))
    schedule = get_schedule(settings["schedule"])
    loss_sum = torch.zeros(())
    for b in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"] * schedule(epoch + b / steps, epochs)
        rows = order[b * size : (b + 1) * size]
        loss = F.cross_entropy(model(inputs.batch(rows)), y[rows], label_smoothing=settings["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    return loss_sum.item() / steps


def fit(model, optimizer, settings: dict, train: tuple, validation: tuple | None) -> dict:
    """Train for the recipe's epochs; keep the weights of the best epoch by the recipe's ``monitor``
    (lowest validation loss or highest validation accuracy; early stopping after ``patience`` epochs
    without a better one, as xpnet). Returns what happened, epoch by epoch."""
    rng = np.random.default_rng(settings["seed"])  # the permutations xpnet's fit draws
    monitor, sign = settings["monitor"], (1.0 if settings["monitor"] == "val_loss" else -1.0)
    best = {"score": math.inf, "epoch": 0, "state": None}  # score: the monitored figure, lower is better
    records = []
    for epoch in range(settings["epochs"]):
        start = time.perf_counter()
        record = {"epoch": epoch + 1, "loss": train_epoch(model, optimizer, *train, settings, epoch, rng)}
        if validation is not None:
            record["val_loss"], record["val_accuracy"] = evaluate(model, *validation)
        record["seconds"] = time.perf_counter() - start
        records.append(record)
        if validation is None:
            continue
        if sign * record[monitor] < best["score"]:
            best = {"score": sign * record[monitor], "epoch": epoch + 1, "state": _copy_state(model)}
        elif settings["patience"] and epoch + 1 - best["epoch"] >= settings["patience"]:
            break
    if best["state"] is not None and best["epoch"] != len(records):
        model.load_state_dict(best["state"])
    return {"records": records, "best_epoch": best["epoch"] or len(records)}


def _copy_state(model: nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def run(settings: dict, out: str | None = None) -> dict:
    """Load the data, train the recipe in PyTorch eager, test it once; the result as a dict."""
    started = time.perf_counter()
    check_supported(settings)
    data = load_dataset(settings["dataset"], data_dir=settings.get("data_dir"))
    X, y, X_val, y_val = train_val_split(data.X_train, data.y_train, settings["val_split"], seed=settings["seed"])
    scaling, dtype = Scaling.fit(settings["scaling"], X), getattr(torch, settings["dtype"])
    labels = lambda v: torch.from_numpy(np.asarray(v, dtype=np.int64))  # noqa: E731
    train = (Inputs(X, scaling, dtype), labels(y))
    validation = (Inputs(X_val, scaling, dtype), labels(y_val)) if len(X_val) else None
    torch.manual_seed(settings["seed"])  # dropout masks (they cannot match xpnet's)
    model = build_model(settings, [data.num_features, *settings["layers"], data.num_classes])
    optimizer = build_optimizer(settings, model)
    result = fit(model, optimizer, settings, train, validation)
    test_loss, test_accuracy = evaluate(model, Inputs(data.X_test, scaling, dtype), labels(data.y_test))
    if out:
        torch.save(model.state_dict(), out)
    result.update(test={"loss": test_loss, "accuracy": test_accuracy}, seconds=time.perf_counter() - started)
    result["torch"], result["threads"] = torch.__version__, torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="default", help="the xpnet recipe to reproduce")
    parser.add_argument("--seed", type=int, default=None, help="seed for weights, split and order")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--out", default=None, help="save the trained state_dict here (torch.save)")
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args.recipe, {"seed": args.seed, "epochs": args.epochs})
        result = run(settings, args.out)
    except ConfigError as exc:
        print(f"xpnet: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
