"""One class per array library, chosen in one resolver.

Every library's ``Backend`` subclass keeps the base class's methods and signatures
(as thinc's ``tests/backends/test_ops.py`` holds its ``Ops`` subclasses), so code written
against ``Backend`` runs on any of them; and nothing outside the resolver and the library
modules compares a backend's name with a library's: it asks the backend instead.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import CPU_BACKENDS, blobs, build_mlp

from xpnet.backend import BACKENDS, LIBRARIES, Backend, CupyBackend, StrictBackend, backend_class, get_backend
from xpnet.errors import ConfigError
from xpnet.train import fit

PACKAGE = Path(__file__).resolve().parent.parent / "xpnet"
#: The names a backend's name could be compared with: the registered ones and the one coming next.
LIBRARY_NAMES = {*BACKENDS, *(cls.module for cls in LIBRARIES.values()), "jax"}
#: Where a library's name may be written in a comparison: the resolver and each library's own module.
EXEMPT = {PACKAGE / "backend" / "resolve.py"} | {Path(inspect.getsourcefile(cls)) for cls in LIBRARIES.values()}


# -- every class keeps the base's API ---------------------------------------------------------


def _kind(cls: type, name: str) -> str:
    """How ``cls`` defines ``name``: a property, classmethod, staticmethod, method or plain value."""
    found = inspect.getattr_static(cls, name)
    for kind in (property, classmethod, staticmethod):
        if isinstance(found, kind):
            return kind.__name__
    return "method" if inspect.isfunction(found) else "value"


def _signature(cls: type, name: str) -> str | None:
    """``name``'s signature as text (parameter names, kinds, defaults, annotations), None for values."""
    found = inspect.getattr_static(cls, name)
    function = getattr(found, "fget", None) or getattr(found, "__func__", None) or found
    return str(inspect.signature(function)) if callable(function) else None


def api_mismatches(cls: type) -> list[str]:
    """What ``cls`` defines differently from ``Backend``: a public name the base lacks, or an
    override (public, or one of the base's private hooks) of another kind or signature."""
    problems = []
    for name in sorted(set(dir(cls)) - set(dir(object))):
        if name.startswith("__") or (name.startswith("_") and not hasattr(Backend, name)):
            continue  # a library's own private helpers are its business
        if not hasattr(Backend, name):
            problems.append(f"{cls.__name__}.{name} is not on Backend")
        elif _kind(cls, name) != _kind(Backend, name):
            problems.append(f"{cls.__name__}.{name} is a {_kind(cls, name)}, on Backend a {_kind(Backend, name)}")
        elif _signature(cls, name) != _signature(Backend, name):
            problems.append(f"{cls.__name__}.{name}{_signature(cls, name)} != Backend's {_signature(Backend, name)}")
    return problems


@pytest.mark.parametrize("cls", LIBRARIES.values(), ids=list(LIBRARIES))
def test_every_backend_class_keeps_the_base_api(cls):
    assert issubclass(cls, Backend) and cls is not Backend
    assert api_mismatches(cls) == []


def test_the_api_check_can_fail():
    class Drifted(Backend):
        def upload(self, host, dtype=None, stream=None):  # an extra parameter
            return host

        @property
        def synchronize(self):  # a method turned into a property
            return None

        def gpu_only(self):  # public, and not on the base
            return 0

    assert api_mismatches(Drifted) == [
        "Drifted.gpu_only is not on Backend",
        "Drifted.synchronize is a property, on Backend a method",
        "Drifted.upload(self, host, dtype=None, stream=None) != Backend's (self, host: 'Any', dtype: 'Any' = None)",
    ]


@pytest.mark.parametrize(("name", "cls"), LIBRARIES.items(), ids=list(LIBRARIES))
def test_each_class_is_registered_under_its_own_name(name, cls):
    assert cls.name == name and backend_class(name) is cls
    assert backend_class(name.upper()) is cls  # through the one spelling rule
    assert cls.device_kinds and set(cls.device_kinds) <= {"cpu", "cuda"}
    assert cls.module.replace("_", "-") == name or cls.module == name


def test_an_unknown_backend_name_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="numpy, cupy, torch, array-api-strict, jax"):
        backend_class("tensorflow")


def test_a_new_library_is_one_class_and_one_registry_line(monkeypatch):
    """The seam the JAX backend will use: a subclass registered in ``LIBRARIES`` is reachable by
    name and trains, with nothing else told about it (here a copy of array-api-strict's class)."""

    class Mirror(StrictBackend):
        name: ClassVar[str] = "mirror"

    monkeypatch.setitem(LIBRARIES, "mirror", Mirror)
    X, y = blobs(n=32)
    runs = {}
    for name in ("array-api-strict", "Mirror"):
        net = build_mlp((name, "device1"), [2, 4, 2], seed=3)
        history = fit(net, X, y, epochs=2, batch_size=8, seed=0)
        runs[type(net.backend)] = history.records[-1]["loss"]
    assert runs.keys() == {StrictBackend, Mirror}
    assert runs[Mirror] == runs[StrictBackend]


def test_resolved_backends_are_instances_of_their_library_class(spec):
    backend = get_backend(*spec)
    assert type(backend) is LIBRARIES[spec[0]] and backend.name == spec[0]
    assert get_backend(backend) is backend


def test_the_base_class_is_the_array_api_way():
    """``Backend`` itself runs the standard's calls: array-api-strict's namespace through it
    uploads, copies and reads back as its own class does (DLPack on the CPU device)."""
    strict = get_backend("array-api-strict")
    generic = Backend(strict.xp, strict.device)
    array = generic.upload(np.arange(3.0), strict.xp.float32)
    assert generic.owns(array) and strict.owns(generic.copy(array))
    np.testing.assert_array_equal(generic.to_host(array), [0.0, 1.0, 2.0])
    with pytest.raises(NotImplementedError, match="Backend does not say how to find its devices"):
        Backend.for_device(None)


@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_cpu_backends_answer_the_cuda_questions_alike(spec):
    backend = get_backend(*spec)
    assert backend.cuda_index is None and backend.compute_capability is None
    assert backend.stream_pointer() == 0 and backend.tf32_state().startswith("n/a")
    assert not backend.compiles_kernels
    assert isinstance(backend.activated(), contextlib.nullcontext)


# -- no name comparisons outside the resolver --------------------------------------------------


def _names_a_library(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in LIBRARY_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_library(item) for item in node.elts)
    return False


def _is_backend_name(node: ast.AST) -> bool:
    """``backend.name``, ``self.backend.name``, ``ctx.backend.name`` and the like."""
    if not (isinstance(node, ast.Attribute) and node.attr == "name"):
        return False
    owner = node.value
    return (isinstance(owner, ast.Name) and "backend" in owner.id) or (
        isinstance(owner, ast.Attribute) and "backend" in owner.attr
    )


def name_comparisons(source: str, where: str = "<source>") -> list[str]:
    """Each comparison in ``source`` of a backend's name, or of anything with a library's name
    (``backend.name == "cupy"``, ``name in ("numpy", "array-api-strict")``), and each use of a
    library's class by name (``isinstance(backend, CupyBackend)``), as ``where:line: code``."""
    classes = {cls.__name__ for cls in LIBRARIES.values()}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hit = any(_names_a_library(o) for o in operands) or any(_is_backend_name(o) for o in operands)
        else:
            hit = isinstance(node, ast.Name) and node.id in classes
        if hit:
            found.append(f"{where}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_backend_name_comparisons_outside_the_resolver():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in EXEMPT:
            continue
        found += name_comparisons(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == []


def test_the_name_count_can_fail():
    source = (
        "if backend.name == 'cupy':\n    pass\n"
        "if name in ('numpy', 'array-api-strict'):\n    pass\n"
        "ok = self.backend.name != other\n"
        "gpu = isinstance(backend, CupyBackend)\n"
        "fine = impl == 'direct' and act.name == 'relu'\n"
    )
    assert name_comparisons(source) == [
        "<source>:1: backend.name == 'cupy'",
        "<source>:3: name in ('numpy', 'array-api-strict')",
        "<source>:5: self.backend.name != other",
        "<source>:6: CupyBackend",
    ]


class _StubGPU:
    """What ``CupyBackend`` asks of a ``cupy.cuda.Device``, recorded (no GPU here)."""

    id, compute_capability = 1, "90"

    def __init__(self):
        self.entered = self.synchronized = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        self.synchronized += 1


class _StubCupy:
    """CuPy's namespace as far as an upload and a copy go: NumPy, recording the calls."""

    def __init__(self):
        self.calls = []

    def asarray(self, host, dtype=None, copy=None, **extra):
        self.calls.append(("asarray", extra))
        return np.array(host, dtype=dtype, copy=True)


def test_the_cupy_class_makes_its_own_gpu_current_around_each_allocation():
    """array-api-compat's CuPy ignores ``device=``: an upload, a copy and a dropout draw on
    cuda:1 must run with cuda:1 current, and without ``device=`` passed."""
    device, xp = _StubGPU(), _StubCupy()
    backend = CupyBackend(xp, device)
    assert backend.device_name == "cuda:1" and backend.cuda_index == 1 and backend.compute_capability == "90"
    assert backend.compiles_kernels and backend.activated() is device
    array = backend.upload([1.0, 2.0], np.float32)
    backend.copy(array)
    assert device.entered == 2 and xp.calls == [("asarray", {}), ("asarray", {})]
    backend.synchronize()
    assert device.synchronized == 1
    assert isinstance(backend.flush_denormals(), contextlib.nullcontext)  # a GPU's arithmetic, not the CPU's
