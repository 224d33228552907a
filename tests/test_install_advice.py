"""Install advice and refusals say what is true on the machine at hand, in one spelling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import xpnet.backend.resolve
from xpnet.backend import cuda, get_backend
from xpnet.backend.base import TORCH_CPU_INSTALL, TORCH_HINT
from xpnet.cli import main
from xpnet.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def no_driver(monkeypatch):
    monkeypatch.setattr(xpnet.backend.resolve, "nvidia_driver_missing", lambda: True)


@pytest.mark.parametrize(("backend", "device"), [(None, "cuda"), ("cupy", "cuda:1"), ("torch", "cuda")])
def test_a_gpu_on_a_machine_without_an_nvidia_driver_is_refused_as_such(no_driver, backend, device):
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("needs PyTorch")
    with pytest.raises(BackendError) as caught:
        get_backend(backend, device)
    message = str(caught.value)
    assert "this machine has no NVIDIA driver" in message and "so no CUDA GPU" in message
    assert "xpnet[cuda12]" not in message and "driver version is insufficient" not in message
    assert message.endswith('train on the CPU with device="cpu"')  # the Python API's words


def test_the_command_line_says_its_own_flag(no_driver, capsys):
    assert main(["train", "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "xpnet: error: device 'cuda': this machine has no NVIDIA driver" in err
    assert err.rstrip().endswith("train on the CPU with --device cpu"), err


def test_the_driver_probe_answers_on_this_machine():
    found = Path("/proc/driver/nvidia/version").exists()
    assert cuda.nvidia_driver_missing() in ((False,) if found else (True, False))


def test_pytorch_is_advised_in_one_spelling_everywhere():
    assert TORCH_CPU_INSTALL in TORCH_HINT and '"xpnet[torch]"' in TORCH_HINT
    assert TORCH_CPU_INSTALL in README  # the table and the Tests section
    assert "torch==" not in README  # a pin is this machine's wheel store, not advice
    table_row = next(line for line in README.splitlines() if line.startswith("| PyTorch |"))
    assert TORCH_CPU_INSTALL in table_row


def test_the_onnx_extra_installs_what_readmes_onnx_example_imports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "import onnxruntime" in README
    assert any(requirement.startswith("onnxruntime") for requirement in extras["onnx"])
