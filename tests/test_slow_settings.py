"""Settings that make a run much slower on the machine at hand are said before training, and in --help."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NO_TORCH

from xpnet.backend import cpu
from xpnet.cli import build_parser, main

AVX2_ONLY = frozenset({"sse2", "avx", "avx2", "fma"})
WITH_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}


@pytest.fixture
def blobs_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, X=rng.standard_normal((40, 4)).astype(np.float32), y=rng.integers(0, 2, 40))
    return path


def _train_stderr(tmp_path, blobs_npz, capsys, *flags) -> str:
    args = ["train", "--dataset", str(blobs_npz), "--epochs", "1", "--quiet", "--out", str(tmp_path / "m.safetensors")]
    assert main([*args, *flags]) == 0
    return capsys.readouterr().err


@NO_TORCH
def test_bfloat16_on_a_cpu_without_avx512_bf16_is_warned_before_training(tmp_path, blobs_npz, capsys, monkeypatch):
    flags = ["--backend", "torch", "--device", "cpu", "--precision", "mixed-bfloat16"]
    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2_ONLY)
    said = _train_stderr(tmp_path, blobs_npz, capsys, *flags)
    assert "xpnet: warning: --precision mixed-bfloat16 on a CPU without AVX512-BF16" in said
    monkeypatch.setattr(cpu, "cpu_flags", lambda: WITH_BF16)
    assert "warning" not in _train_stderr(tmp_path, blobs_npz, capsys, *flags)


def test_tf32_on_a_cpu_is_warned_and_float32_runs_unwarned(tmp_path, blobs_npz, capsys):
    assert "xpnet: warning: --tf32 does nothing on cpu" in _train_stderr(tmp_path, blobs_npz, capsys, "--tf32")
    assert "warning" not in _train_stderr(tmp_path, blobs_npz, capsys)


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = cpu.cpu_flags()
    assert not flags or "fpu" in flags or "fp" in flags  # x86's first flag, or ARM's


def test_help_says_both(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "on a CPU fast only with AVX512-BF16 or AMX, else many times slower than float32" in text
    assert "on a CPU it does nothing, with a warning" in text
