"""scripts/time_to_accuracy.py's bookkeeping: the kept epoch, the summary and the doc section. No timings."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "time_to_accuracy.py"


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_kept_epoch_is_the_first_lowest_validation_loss(tta):
    records = [
        {"val_loss": 0.5, "val_accuracy": 0.80, "seconds": 1.0},
        {"val_loss": 0.3, "val_accuracy": 0.85, "seconds": 1.5},
        {"val_loss": 0.3, "val_accuracy": 0.86, "seconds": 1.0},
        {"val_loss": 0.4, "val_accuracy": 0.90, "seconds": 1.0},  # best accuracy, not the kept one
    ]
    chosen = tta._selected(records, 0.84)
    assert chosen == {"test_accuracy": 0.84, "best_epoch": 2, "epochs": 4, "val_accuracy": 0.85, "training": 4.5}
    by_accuracy = tta._selected([*records, {**records[3], "seconds": 0.5}], 0.86, "val_accuracy")
    assert by_accuracy["best_epoch"] == 4 and by_accuracy["val_accuracy"] == 0.90  # the first of the two 0.90s


def _run(tta, runner, seed, accuracy, wall):
    return tta.Run(runner, seed, accuracy, 3, 3, 0.9, wall, wall - 2, 0.5)


def test_summary_gives_medians_ranges_the_every_seed_verdict_and_paired_ratios(tta):
    runs = [
        _run(tta, "xpnet", 0, 0.905, 10.0),
        _run(tta, "torch", 0, 0.903, 15.0),
        _run(tta, "torch", 1, 0.899, 24.0),
        _run(tta, "xpnet", 1, 0.902, 12.0),
    ]
    lines = "\n".join(tta.summary(runs, ["xpnet", "torch"], 0.90))
    assert "| xpnet (NumPy) | 90.35% (90.20%-90.50%) | yes | 11.0 s (10.0 s-12.0 s) |" in lines
    assert "| PyTorch eager | 90.10% (89.90%-90.30%) | no |" in lines
    assert "seed by seed: 1.75x (1.50x-2.00x)" in lines  # 15/10 and 24/12


def test_the_section_replaces_only_its_own_recipe(tta, tmp_path):
    doc = tmp_path / "RECIPES.md"
    doc.write_text("# Recipes\n\nprose\n", encoding="utf-8")
    tta.write_section("default", "first", doc)
    tta.write_section("default-long", "long", doc)
    tta.write_section("default", "second", doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Recipes\n\nprose\n")
    assert "second" in text and "first" not in text and "long" in text
    assert text.count("time-to-accuracy default:begin") == 1
