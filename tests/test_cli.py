"""The command line as a user drives it: train, evaluate, predict, info, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_TORCH

from xpnet.checkpoint import load_model
from xpnet.cli import main
from xpnet.data import read_idx, write_idx
from xpnet.safetensors import load_tensors

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
SMALL = ["--epochs", "3", "--layers", "32", "--batch-size", "16", "--optimizer", "adam", "--lr", "0.003", "--quiet"]


def _images(rng, labels: np.ndarray) -> np.ndarray:
    """28x28 uint8 images whose class is written as a bright row band: easy to learn."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 3, :] = 250
    return images


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST look-alike: the four IDX files, the training pair gzipped."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 10, 600).astype(np.uint8)
    test_labels = rng.integers(0, 10, 200).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", _images(rng, train_labels), compress=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels, compress=True)
    write_idx(folder / "t10k-images-idx3-ubyte", _images(rng, test_labels))
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels)
    return folder


def _train(tmp_path, idx_dir, *extra) -> Path:
    out = tmp_path / "model.safetensors"
    args = ["train", "--data-dir", str(idx_dir), "--out", str(out), *SMALL, *extra]
    assert main(args) == 0
    return out


def test_train_saves_a_model_that_evaluate_and_predict_use(tmp_path, idx_dir, capsys):
    out = _train(tmp_path, idx_dir)
    trained = capsys.readouterr().out
    accuracy = float(trained.split("accuracy")[1].split()[0])
    assert accuracy > 0.9, trained

    assert main(["evaluate", str(out), "--data-dir", str(idx_dir)]) == 0
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out

    predictions = tmp_path / "pred.csv"
    images = idx_dir / "t10k-images-idx3-ubyte"
    assert main(["predict", str(out), str(images), "--out", str(predictions), "--proba"]) == 0
    rows = predictions.read_text().splitlines()
    assert rows[0].startswith("index,label,class,p0")
    assert len(rows) == 201
    labels = [int(row.split(",")[1]) for row in rows[1:]]
    assert labels == load_model(out).predict(read_idx(images).reshape(-1, 784)).tolist()


def test_model_file_layout_and_metadata(tmp_path, idx_dir):
    out = _train(tmp_path, idx_dir, "--layers", "32,16")
    tensors, metadata = load_tensors(out)
    assert {name: t.shape for name, t in tensors.items()} == {
        "layers.0.weight": (32, 784),
        "layers.0.bias": (32,),
        "layers.1.weight": (16, 32),
        "layers.1.bias": (16,),
        "layers.2.weight": (10, 16),
        "layers.2.bias": (10,),
    }
    assert json.loads(metadata["architecture"])["sizes"] == [784, 32, 16, 10]
    assert json.loads(metadata["class_names"])[0] == "T-shirt/top"
    assert json.loads(metadata["scaling"])["kind"] == "standard"  # the default recipe's
    assert json.loads(metadata["training"])["optimizer"] == "adam"
    assert metadata["xpnet_version"]
    assert len(json.loads(metadata["history"])) == 3


def test_history_and_plot_files(tmp_path, idx_dir):
    pytest.importorskip("matplotlib")
    _train(tmp_path, idx_dir, "--history", str(tmp_path / "h.json"), "--plot", str(tmp_path / "p.png"))
    records = json.loads((tmp_path / "h.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"} <= set(records[0])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _train(tmp_path, idx_dir, "--history", str(tmp_path / "h.csv"))
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(lines) == 4


@pytest.mark.parametrize("backend", ["torch", "array-api-strict"], ids=["torch", "strict"])
def test_other_backends_train_from_the_cli(tmp_path, idx_dir, backend, capsys):
    if backend == "torch":
        pytest.importorskip("torch")
    out = tmp_path / "model.safetensors"
    args = ["train", "--data-dir", str(idx_dir), "--out", str(out), *SMALL[:-1], "--backend", backend]
    assert main(args) == 0
    log = capsys.readouterr().out
    network = next(line for line in log.splitlines() if line.startswith("MLP("))  # after the BLAS threads line
    assert f"float32 on {backend} on " in network, log  # the network says where it lives
    assert [line.split()[1] for line in log.splitlines() if line.startswith("epoch")] == ["1", "2", "3"]
    assert float(log.split("accuracy")[1].split()[0]) > 0.9, log
    assert json.loads(load_tensors(out)[1]["training"])["backend"] == backend


def test_early_stopping_restores_best_weights(tmp_path, idx_dir, capsys):
    out = tmp_path / "m.safetensors"
    args = ["train", "--data-dir", str(idx_dir), "--epochs", "40", "--layers", "16", "--optimizer", "adam"]
    args += ["--lr", "0.05", "--schedule", "constant", "--val-split", "0.3", "--quiet"]  # constant: no epochs in it
    assert main([*args, "--patience", "2", "--out", str(out)]) == 0
    history = json.loads(load_tensors(out)[1]["history"])
    best = min(history, key=lambda r: r["val_loss"])
    # Stopped by patience: two epochs after the best, which is therefore not the last.
    assert len(history) == best["epoch"] + 2 < 40, [r["val_loss"] for r in history]
    # The weights kept are the best epoch's, bit for bit: those of the same run stopped there.
    assert main([*args, "--epochs", str(best["epoch"]), "--out", str(tmp_path / "best.safetensors")]) == 0
    kept, at_best = load_tensors(out)[0], load_tensors(tmp_path / "best.safetensors")[0]
    for name, weights in at_best.items():
        np.testing.assert_array_equal(kept[name], weights, err_msg=name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "abc"], "argument --lr"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--val-split", "1.5"], "argument --val-split"),
        (["--layers", "12,x"], "argument --layers"),
        (["--activation", "swish"], "unknown activation 'swish'"),
        (["--loss", "hinge"], "unknown loss 'hinge'"),
        (["--device", "cuda"], "device 'cuda'"),  # no CuPy, no driver or no GPU: each says so
        (["--backend", "torch", "--device", "cuda:0"], "cuda"),
        (["--dataset", "missing.npz"], "missing.npz"),
        (["--history", "h.txt"], "--history"),
        (["--plot", "p.jpg"], "--plot"),
        (["--out", "/dev/null/m.safetensors"], "--out"),
        (["--seed", "-1"], "argument --seed"),
        (["--epochs", "-2"], "argument --epochs"),
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, idx_dir, capsys, args, message):
    if "torch" in args:
        pytest.importorskip("torch")
    argv = ["train", "--data-dir", str(idx_dir), "--out", str(tmp_path / "m.safetensors"), *SMALL, *args]
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "xpnet" in err and "error" in err and message in err
    assert "Traceback" not in err


def test_evaluate_and_predict_refuse_bad_files(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 4)
    assert main(["evaluate", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.safetensors"), "x.npz"]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_info_lists_backends_and_blas(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for word in ("numpy", "cupy", "torch", "array-api-strict", "BLAS", "cpu"):
        assert word in text


def test_python_dash_m_runs_as_a_program(tmp_path, idx_dir):
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xpnet",
            "train",
            "--data-dir",
            str(idx_dir),
            "--out",
            str(tmp_path / "m.safetensors"),
            *SMALL,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "test  loss" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "xpnet", "--epochs", "-x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "xpnet train: error: argument --epochs" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)")
def test_real_fashion_mnist_short_run(tmp_path, capsys):
    """One short run on the real data, found in /usr/share/datasets without --data-dir."""
    out = tmp_path / "m.safetensors"
    assert main(["train", "--epochs", "1", "--out", str(out), "--quiet"]) == 0  # the default recipe, cut short
    accuracy = float(capsys.readouterr().out.split("accuracy")[1].split()[0])
    assert accuracy > 0.8
    assert load_model(out).sizes == [784, 512, 256, 10]


@pytest.fixture(scope="module")
def regression_npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32) + 0.1 * rng.normal(size=300).astype(np.float32)
    path = tmp_path_factory.mktemp("reg") / "reg.npz"
    np.savez(path, X=X, y=y)
    return path


def test_regression_model_evaluates_and_predicts_values(tmp_path, regression_npz, capsys):
    out = tmp_path / "reg.safetensors"
    args = ["train", "--dataset", str(regression_npz), "--loss", "mse", "--layers", "16", "--optimizer", "adam"]
    args += ["--lr", "0.01", "--epochs", "30", "--batch-size", "16", "--weight-decay", "0", "--scaling", "standard"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert "r2" in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 0
    r2 = float(capsys.readouterr().out.split("r2")[1].split()[0])
    assert r2 > 0.9
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, X=np.ones((3, 4), np.float32))
    assert main(["predict", str(out), str(inputs)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "index,y0" and len(rows) == 4
    assert all(len(row.split(",")) == 2 for row in rows[1:])
    float(rows[1].split(",")[1])


def test_regression_data_with_a_classification_loss_is_refused(tmp_path, regression_npz, capsys):
    argv = ["train", "--dataset", str(regression_npz), "--task", "regression", "--out", str(tmp_path / "m.safetensors")]
    assert main(argv) == 2
    assert "--loss mse" in capsys.readouterr().err


def test_monitor_is_a_setting_the_model_file_keeps(tmp_path, idx_dir, capsys):
    out = _train(tmp_path, idx_dir, "--monitor", "Val-Accuracy", "--quiet")
    assert json.loads(load_tensors(out)[1]["training"])["monitor"] == "val_accuracy"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data-dir", str(idx_dir), "--out", str(out), *SMALL, "--monitor", "accuracy"])
    assert exit_info.value.code == 2
    assert "unknown monitor 'accuracy'; choose from val_loss, val_accuracy" in capsys.readouterr().err


def test_monitor_val_accuracy_is_refused_for_regression_before_training(tmp_path, regression_npz, capsys):
    argv = ["train", "--dataset", str(regression_npz), "--loss", "mse", "--monitor", "val_accuracy"]
    assert main([*argv, "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--monitor val_accuracy needs a classification dataset" in err and "epoch" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_evaluate_refuses_a_dataset_with_other_classes(tmp_path, idx_dir, capsys):
    out = _train(tmp_path, idx_dir)
    rng = np.random.default_rng(0)
    other = tmp_path / "other.npz"
    np.savez(other, X=rng.integers(0, 255, (50, 784)).astype(np.uint8), y=np.arange(50) % 3)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", str(other)]) == 2
    assert "3 classes/targets but the model has 10 outputs" in capsys.readouterr().err


def test_resume_on_another_backend_with_dropout(tmp_path, idx_dir, capsys):
    pytest.importorskip("torch")
    out = _train(tmp_path, idx_dir, "--dropout", "0.2", "--epochs", "1")
    checkpoint = tmp_path / "model.ckpt.safetensors"
    assert checkpoint.exists()
    resumed = ["train", "--resume", str(checkpoint), "--backend", "torch", "--epochs", "2", "--out", str(out)]
    assert main(resumed) == 0
    log = capsys.readouterr().out
    assert "float32 on torch on cpu)" in log and f"resuming {checkpoint} at epoch 2, batch 0" in log, log
    assert [record["epoch"] for record in json.loads(load_tensors(out)[1]["history"])] == [1, 2]
    assert json.loads(load_tensors(out)[1]["training"])["backend"] == "torch"


@pytest.mark.parametrize(
    "precision",
    ["mixed-float16", pytest.param("mixed-bfloat16", marks=pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch"))],
)
def test_train_in_mixed_precision_saves_float32_weights_that_evaluate_uses(tmp_path, idx_dir, capsys, precision):
    backend = ["--backend", "torch"] if precision == "mixed-bfloat16" else []
    out = _train(tmp_path, idx_dir, "--precision", precision, "--history", str(tmp_path / "h.json"), *backend)
    trained = capsys.readouterr().out
    assert float(trained.split("accuracy")[1].split()[0]) > 0.9, trained
    tensors, metadata = load_tensors(out)
    assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}
    assert json.loads(metadata["architecture"])["precision"] == precision
    assert json.loads(metadata["training"])["precision"] == precision
    if precision == "mixed-float16":
        assert "loss_scale" in json.loads((tmp_path / "h.json").read_text())[-1]
    assert main(["evaluate", str(out), "--data-dir", str(idx_dir)]) == 0  # in float32, on NumPy


def test_bfloat16_without_pytorch_says_so(tmp_path, idx_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(
            main(
                [
                    "train",
                    "--data-dir",
                    str(idx_dir),
                    "--out",
                    str(tmp_path / "m.safetensors"),
                    *SMALL,
                    "--precision",
                    "mixed-bfloat16",
                ]
            )
        )
    assert exit_info.value.code == 2
    assert "mixed-bfloat16 needs PyTorch" in capsys.readouterr().err
