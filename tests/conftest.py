"""Shared pytest fixtures.

Fixtures that need the o200k vocabulary skip, with the reason, when it is neither in
$TIKTOKEN_ENCODINGS_BASE, nor in ../shared/vocab beside the checkout, nor downloadable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from oss_serve.harmony.encoding import VOCAB_ENV_VAR, find_vocab_dir

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding


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

    if find_vocab_dir() is None:
        # The file was downloaded into our cache rather than found; point the library at it.
        os.environ[VOCAB_ENV_VAR] = str(vocab_file.parent)
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
