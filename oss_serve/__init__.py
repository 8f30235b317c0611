"""oss-serve: a compact serving engine for gpt-oss."""
from __future__ import annotations

from typing import Any

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a light submodule (the tokenizer, the CLI parser) does not load torch.
    if name == "LLM":
        from oss_serve.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from oss_serve.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'oss_serve' has no attribute {name!r}")
