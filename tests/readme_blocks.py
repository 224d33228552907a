"""Runs the Python blocks of one Markdown file, in order, in one namespace (as a reader would in
one session): ``python readme_blocks.py BLOCKS.json``. A statement that asks for a CUDA device
(``device="cuda"``) must, on a machine without a GPU, be refused with an ``XpnetError``; it is
then skipped, and the blocks go on. Prints one line per refused statement; any other failure
ends with its traceback and status 1."""

from __future__ import annotations

import ast
import json
import sys

import xpnet
from xpnet.backend import get_backend


def asks_for_cuda(statement: ast.stmt) -> bool:
    return any(
        isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and node.value.value == "cuda"
        for node in ast.walk(statement)
    )


def has_gpu() -> bool:
    try:
        get_backend(device="cuda")
    except xpnet.XpnetError:
        return False
    return True


def run(blocks: list[dict]) -> None:
    namespace: dict = {"__name__": "__main__"}
    gpu = has_gpu()
    for block in blocks:
        tree = ast.parse(block["code"], filename=block["where"])
        for statement in tree.body:
            code = compile(ast.Module([statement], []), block["where"], "exec")
            if gpu or not asks_for_cuda(statement):
                exec(code, namespace)
                continue
            try:
                exec(code, namespace)
            except xpnet.XpnetError as exc:
                print(f"refused (no GPU): line {statement.lineno} of {block['where']}: {exc}", flush=True)
            else:
                raise AssertionError(f"line {statement.lineno} of {block['where']} asked for CUDA and was not refused")


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        run(json.load(file))
