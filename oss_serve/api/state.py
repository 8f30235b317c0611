"""What every handler shares: the engine, the text tokenizer, the configuration."""
from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from oss_serve.api.engine_client import Engine, Generator
from oss_serve.api.errors import APIError
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


@dataclass
class ServingState:
    server_args: ServerArgs
    engine: Engine
    generator: Generator
    tokenizer: TextTokenizer
    context_length: int
    model_name: str
    vocab_size: int  # token ids in requests must be below it
    default_params: SamplingParams = field(default_factory=SamplingParams)  # the checkpoint's generation_config
    weight_version: str = "default"
    started_at: float = field(default_factory=time.time)
    ready: bool = False  # after the warm-up request

    def check_model(self, requested: str | None) -> None:
        """A 400 for a model name this server does not serve (None / empty means 'the one')."""
        if requested and requested not in (self.model_name, self.server_args.model_path, "default"):
            raise APIError(f"The model '{requested}' does not exist; this server serves "
                           f"'{self.model_name}'.", param="model", code="model_not_found")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"
