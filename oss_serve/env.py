"""Every environment variable oss-serve reads, in one place.

Read when asked, not at import, so that a wrapper or a test may set them first.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

VOCAB_ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"
VOCAB_FILE_NAME = "o200k_base.tiktoken"
# The model's code run by the python tool must not read the server's keys from its environment.
_SECRET_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_tf32() -> bool:
    """OSS_SERVE_KERNEL_TF32=1 lets fp32 kernel dots use tf32 tensor cores."""
    return os.environ.get("OSS_SERVE_KERNEL_TF32") == "1"


def skinny_linear_enabled() -> bool:
    """OSS_SERVE_SKINNY_LINEAR=0 keeps cuBLAS for every small-batch linear."""
    return os.environ.get("OSS_SERVE_SKINNY_LINEAR", "1") != "0"


def search_settings() -> dict[str, str | None]:
    """The browser tool's provider choice, keys and endpoints."""
    return {"backend": _get("BROWSER_BACKEND"), "exa_key": _get("EXA_API_KEY"), "you_key": _get("YDC_API_KEY"),
            "exa_url": _get("EXA_BASE_URL"), "you_url": _get("YDC_BASE_URL")}


def python_backend() -> str | None:
    return _get("PYTHON_EXECUTION_BACKEND")


def python_docker_image() -> str | None:
    return _get("PYTHON_DOCKER_IMAGE")


def environment_without_secrets() -> dict[str, str]:
    """This process's environment less anything named like a credential, and less its virtualenv."""
    return {k: v for k, v in os.environ.items()
            if k != "VIRTUAL_ENV" and not any(h in k.upper() for h in _SECRET_HINTS)}


def openai_api_key() -> str | None:
    """The key the benchmark and eval clients send to the server they measure."""
    return _get("OPENAI_API_KEY")


def cache_dir() -> Path:
    """Where derived artifacts live: $OSS_SERVE_CACHE_DIR, else $XDG_CACHE_HOME/oss_serve, else ~/.cache."""
    if explicit := _get("OSS_SERVE_CACHE_DIR"):
        return Path(explicit)
    return Path(_get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oss_serve"


def vocab_dir() -> Path | None:
    """The folder holding o200k_base.tiktoken: $TIKTOKEN_ENCODINGS_BASE, else `../shared/vocab` beside this
    checkout, else our cache; None when none has it (openai-harmony then downloads it)."""
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "vocab"
    for folder in (_get(VOCAB_ENV_VAR), beside_checkout, cache_dir()):
        if folder and (Path(folder) / VOCAB_FILE_NAME).is_file():
            return Path(folder)
    return None


@contextlib.contextmanager
def vocab_visible_to_harmony() -> Iterator[None]:
    """openai-harmony takes the vocabulary folder only from its environment variable: expose the one found
    for the duration of a load, then put the environment back as it was."""
    found, before = vocab_dir(), os.environ.get(VOCAB_ENV_VAR)
    if found is None or before is not None:
        yield
        return
    os.environ[VOCAB_ENV_VAR] = str(found)
    try:
        yield
    finally:
        del os.environ[VOCAB_ENV_VAR]
