"""A fused kernel's CUDA body run with NumPy, to check it where no GPU is.

Each fused kernel's body is a few C statements (``backend.kernel_spec``). ``CKernel``
runs them with NumPy, called exactly as CuPy's ``ElementwiseKernel`` is (inputs, then
outputs updated in place), so the argument order, the math and the in-place updates
of every fused path can be held to the array-API code they replace on any machine.
It knows only the forms the kernels use: statements ``[T ]x op= expr`` and
``if (!(cond)) x = 0``, and a whole body ``if (cond) { statements }`` (the optimizers'
skip of a float16 overflow): each element keeps its old outputs where ``cond`` is false.
"""

from __future__ import annotations

import re

import numpy as np

from xpnet.backend import kernel_spec

_GUARD = re.compile(r"if \(!\((.+)\)\) (\w+) = 0")
_ASSIGN = re.compile(r"(\w+) ([-+*]?=) (.+)")
_BLOCK = re.compile(r"if \((\w+)\) \{(.*)\}", re.DOTALL)


class CKernel:
    """An ``ElementwiseKernel`` stand-in that interprets the kernel's C body with NumPy."""

    def __init__(self, name: str, spec: tuple[str, str, str] | None = None):
        """``spec``: ``(inputs, outputs, body)`` to run instead of the registered kernel's (a test's broken body)."""
        inputs, outputs, self.body = spec or kernel_spec(name)
        self.name = name
        self.inputs = [p.split()[-1] for p in inputs.split(",")]
        self.outputs = [p.split()[-1] for p in outputs.split(",")]
        self.types = [p.split()[0] for p in f"{inputs},{outputs}".split(",")]

    def __call__(self, *args):
        if len(args) != len(self.inputs) + len(self.outputs):
            raise TypeError(f"kernel {self.name} takes {len(self.inputs) + len(self.outputs)} arguments")
        env = dict(zip(self.inputs + self.outputs, self._typed(args)), sqrt=np.sqrt)
        env.update({name: np.array(env[name]) for name in self.outputs})  # work on copies, write back at the end
        block = _BLOCK.fullmatch(self.body.strip())
        if block is None:
            self._run_all(self.body, env)
        else:  # every element runs the statements; where the condition is false it keeps its old outputs
            condition, inner = block.groups()
            taken = dict(env)
            with np.errstate(all="ignore"):  # the arithmetic of a branch not taken (an inf gradient) is discarded
                self._run_all(inner, taken)
            env.update({name: np.where(env[condition], taken[name], env[name]) for name in self.outputs})
        results = args[len(self.inputs) :]
        for name, array in zip(self.outputs, results):
            array[...] = env[name]
        return results[0] if len(results) == 1 else results

    def _typed(self, args) -> list:
        """The arguments as the kernel sees them: CuPy casts a scalar to its parameter's type (``T``
        as bound by the arrays, or a named type), so ``1 - beta2`` runs in float32 on float32 arrays."""
        bound = {t: a.dtype for t, a in zip(self.types, args) if isinstance(a, np.ndarray)}
        return [
            a if isinstance(a, np.ndarray) or (t not in bound and not _named(t)) else np.dtype(bound.get(t, t)).type(a)
            for t, a in zip(self.types, args)
        ]

    def _run_all(self, statements: str, env: dict) -> None:
        for statement in filter(None, (s.strip() for s in statements.split(";"))):
            self._run(statement.removeprefix("T "), env)

    @staticmethod
    def _run(statement: str, env: dict) -> None:
        guarded = _GUARD.fullmatch(statement)
        if guarded:
            condition, target = guarded.groups()
            env[target] = np.where(eval(condition, env), env[target], 0)
            return
        matched = _ASSIGN.fullmatch(statement)
        if matched is None:
            raise ValueError(f"the interpreter does not know the statement {statement!r}")
        target, op, expression = matched.groups()
        value = eval(expression, env)
        if op != "=":
            old = env[target]
            value = old - value if op == "-=" else old + value if op == "+=" else old * value
        env[target] = value


def _named(ctype: str) -> bool:
    """Whether ``ctype`` names a type NumPy knows (float32, ...) rather than a placeholder (T, X)."""
    try:
        np.dtype(ctype)
    except TypeError:
        return False
    return len(ctype) > 1
