"""What ``xpnet train`` tells a newcomer: the default recipe's values in --help, a finished run
left alone by --resume, and why a smoothed training loss sits above the validation loss."""

from __future__ import annotations

import numpy as np
import pytest

from xpnet.cli import build_parser, main
from xpnet.recipes import get_recipe


@pytest.fixture
def blobs_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, X=rng.standard_normal((60, 4)).astype(np.float32), y=rng.integers(0, 3, 60))
    return path


def test_train_help_shows_the_default_recipes_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    recipe = get_recipe("default").settings
    for flag, key in (("epochs", "epochs"), ("lr", "lr"), ("batch-size", "batch_size"), ("optimizer", "optimizer")):
        assert f"(default: {recipe[key]}, in the default recipe)" in text, flag
    assert "(default: 512,256, in the default recipe)" in text  # --layers, as it is typed


def test_resume_of_a_finished_run_says_complete_and_leaves_the_files_alone(tmp_path, blobs_npz, capsys):
    out = tmp_path / "m.safetensors"
    base = ["train", "--dataset", str(blobs_npz), "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(out)]) == 0
    checkpoint = tmp_path / "m.ckpt.safetensors"
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (out, checkpoint)}
    capsys.readouterr()
    assert main(["train", "--resume", str(checkpoint), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "the run is complete (all 2 of its epochs are done); nothing to train, no file changed" in captured.err
    assert "--epochs 7 trains 5 more" in captured.err
    assert "resuming" not in captured.out
    assert before == {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (out, checkpoint)}
    assert main(["train", "--resume", str(checkpoint), "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    assert out.read_bytes() != before[out][0]  # more epochs asked for: it trains on


def test_label_smoothing_is_said_to_be_in_the_training_loss(tmp_path, blobs_npz, capsys):
    args = ["train", "--dataset", str(blobs_npz), "--epochs", "1", "--out", str(tmp_path / "m.safetensors")]
    assert main([*args, "--label-smoothing", "0.1", "--no-progress"]) == 0
    assert "label smoothing 0.1: the training loss is taken against the smoothed targets" in capsys.readouterr().out
    assert main([*args, "--label-smoothing", "0", "--no-progress"]) == 0
    assert "label smoothing" not in capsys.readouterr().out
