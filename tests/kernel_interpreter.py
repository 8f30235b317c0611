"""Runs a kernel test file again in a fresh process under TRITON_INTERPRET=1.

The variable must be set before triton is imported, and an out-of-bounds access in the interpreter
can kill the process, so CPU runs of the kernel tests always happen in a child pytest (tests/conftest.py
collects each `test_kernels_*.py` as one item that does so).
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def kernels_runnable_here() -> bool:
    """True inside the interpreter child, or on a machine with a GPU (tests then run natively)."""
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def run_file_under_interpreter(test_file: str, timeout_s: float = 600) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(test_file)))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W", "ignore",
                             os.path.abspath(test_file)],
                            env=env, cwd=repo_root, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"kernel tests under TRITON_INTERPRET=1 failed (exit {result.returncode}):\n"
                             f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}")
