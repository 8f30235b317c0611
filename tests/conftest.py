"""Shared pytest fixtures.

Fixtures that need the o200k vocabulary skip, with the reason, when it is neither in
$TIKTOKEN_ENCODINGS_BASE, nor in ../shared/vocab beside the checkout, nor downloadable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kernel_interpreter import kernels_runnable_here, run_file_under_interpreter

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding


class _KernelFileUnderInterpreter(pytest.File):
    """A kernel test file where kernels cannot run: one item that reruns the whole file in a
    TRITON_INTERPRET=1 child, without importing it here."""

    def collect(self):
        yield _InterpreterRun.from_parent(self, name="test_under_triton_interpreter")


class _InterpreterRun(pytest.Item):
    def runtest(self) -> None:
        run_file_under_interpreter(str(self.path))

    def reportinfo(self):
        return self.path, 0, self.name


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if module_path.name.startswith("test_kernels_") and not kernels_runnable_here():
        return _KernelFileUnderInterpreter.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    """The `o200k_base.tiktoken` file, or skip."""
    from oss_serve.testing.tokenizer_json import locate_vocab_file

    try:
        return locate_vocab_file()
    except OSError as error:
        pytest.skip(
            "o200k_base.tiktoken not found: set TIKTOKEN_ENCODINGS_BASE to a folder holding it, "
            f"place it in ../shared/vocab beside the checkout, or allow the download ({error})"
        )


@pytest.fixture(scope="session")
def harmony_encoding(vocab_file: Path) -> HarmonyEncoding:
    """openai-harmony's HARMONY_GPT_OSS encoding."""
    from oss_serve.harmony.encoding import get_harmony_encoding

    return get_harmony_encoding()


@pytest.fixture(scope="session")
def tokenizer_json_path(vocab_file: Path) -> Path:
    """The o200k_harmony tokenizer.json, built once and cached on disk across sessions."""
    from oss_serve.testing.tokenizer_json import cached_tokenizer_json

    return cached_tokenizer_json(vocab_file=vocab_file)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_json_path: Path) -> Path:
    """A random-weight `tiny` checkpoint (bf16 experts), seed 0, built once per session."""
    from oss_serve.testing.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"), preset="tiny", mxfp4=False, seed=0)


@pytest.fixture(scope="session")
def tiny_mxfp4_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_json_path: Path) -> Path:
    """The same model as `tiny_ckpt` with MXFP4 experts, built once per session."""
    from oss_serve.testing.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_mxfp4_ckpt"), preset="tiny", mxfp4=True, seed=0)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny matmuls gain nothing from a second thread but synchronisation, and the test box is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
