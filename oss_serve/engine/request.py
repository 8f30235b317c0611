"""A request's state inside the engine process, and the per-step deltas the engine sends back."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from oss_serve.engine.outputs import FinishReason, TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from oss_serve.engine.structured.constraint import RequestConstraint
    from oss_serve.engine.structured.step_masks import StepMasks


# The last entry of `Request.token_ids` while the step that draws it is still on the device (overlapped
# schedule): the next step's input is taken from the device, and the host fills the id in afterwards.
PENDING_TOKEN = -1


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int  # resolved against the context length
    rng: random.Random  # per request, so a seeded request samples the same alone or in any batch
    # prompt + generated tokens; the KV of token_ids[:num_computed] is in the cache.
    token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    full_pages: list[int] = field(default_factory=list)  # logical page -> physical page
    sliding_pages: list[int] = field(default_factory=list)  # same, NO_PAGE once outside the window
    sliding_released: int = 0  # logical sliding pages below this index are released
    table_row: int = -1  # while running: this request's row of the model runner's device page tables
    num_cached_tokens: int = -1  # prompt tokens served from the prefix cache at first admission
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    matched_stop: int | str | None = None
    # Not yet sent to the caller (stream_interval batching).
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Output-token counts for frequency / presence penalties, built lazily.
    output_counts: dict[int, int] | None = None
    # Structured outputs: the grammar state, and the masks being computed for this step's token.
    constraint: RequestConstraint | None = None
    step_masks: StepMasks | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def awaits_token(self) -> bool:
        return self.token_ids[-1] == PENDING_TOKEN

    @property
    def is_prefilling(self) -> bool:
        """More than the last token still lacks KV (a new, chunked or recomputed request)."""
        return self.num_computed < len(self.token_ids) - 1
