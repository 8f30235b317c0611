"""Every message that crosses a process boundary: API process <-> engine process (pickled over ZeroMQ
PUSH/PULL sockets the caller binds), and tensor-parallel rank 0 -> worker ranks (besides each step's
`StepPlan`).

    caller -> engine: EngineStartup (on stdin), then AddRequest | AbortRequest | FlushCache | Shutdown
    engine -> caller: EngineReady | EngineFailed, then StepOutputs per step | CacheFlushed per FlushCache
    rank 0 -> workers: RunnerLayout, then StepPlan per step | CaptureGraphs | Stop

One StepOutputs per step carries every request's delta, so the transport's cost is amortised over the batch.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, fields

import torch

from oss_serve.engine.outputs import FinishReason, TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs


# ---- API process <-> engine process ---------------------------------------------------------------
@dataclass(frozen=True)
class EngineStartup:
    args: ServerArgs
    input_address: str
    output_address: str
    parent_pid: int  # the engine exits when this process is gone


@dataclass(frozen=True)
class EngineInfo:
    """Facts the caller's process needs, sent once the engine is ready."""
    model_folder: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    num_full_tokens: int
    num_sliding_tokens: int
    page_size: int
    default_params: SamplingParams


@dataclass(frozen=True)
class EngineStats:
    """The engine's load, as of its last step (/get_server_info, /metrics, the queue limit)."""
    num_running: int = 0
    num_waiting: int = 0
    full_pages_used: int = 0
    full_pages_total: int = 0
    sliding_pages_used: int = 0
    sliding_pages_total: int = 0
    kv_usage: float = 0.0
    num_preemptions: int = 0
    cached_pages: int = 0
    num_full_tokens: int = 0
    engine_alive: bool = True  # filled in by the caller's side, which sees the process
    num_streams: int = 0  # likewise: streams open in the caller's process


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class FlushCache:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class EngineReady:
    info: EngineInfo


@dataclass(frozen=True)
class EngineFailed:
    traceback: str


@dataclass(slots=True)  # not frozen: a frozen init costs 5x, paid per request per step
class RequestDelta:
    """What the engine process sends the caller about one request after a step (not changed after)."""
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finished: bool
    finish_reason: FinishReason | None = None
    matched_stop: int | str | None = None
    error: str | None = None  # the request ended without finishing: why
    error_status: int = 500  # the HTTP status it maps to: 400 refused at admission, 500 failed in a step

    def __reduce__(self) -> tuple[type[RequestDelta], tuple]:
        # A step's deltas are pickled to the API process every step: positional fields pickle and
        # load in 40 % of the time that slots dataclasses' default state dicts take.
        return RequestDelta, _delta_fields(self)


_delta_fields = operator.attrgetter(*(f.name for f in fields(RequestDelta)))


@dataclass(frozen=True)
class StepOutputs:
    deltas: list[RequestDelta]
    stats: EngineStats


@dataclass(frozen=True)
class CacheFlushed:
    flushed: bool  # False while requests run
    stats: EngineStats  # so that a caller reading stats next sees the flush


# ---- tensor-parallel rank 0 -> worker ranks -----------------------------------------------------------
@dataclass(frozen=True)
class RunnerLayout:
    """What a worker needs to build a model runner like rank 0's: page pools of the same pages (its own KV
    heads in them) and a page-table mirror of the same shape, which rank 0's plans index."""
    layer_windows: list[int | None]
    num_full_pages: int
    num_sliding_pages: int
    page_size: int
    dtype: torch.dtype
    num_table_rows: int
    max_pages_per_seq: int


@dataclass(frozen=True)
class CaptureGraphs:
    """Capture decode graphs now, as rank 0 does: the ranks meet at the same all-reduces inside them."""
    max_batch_size: int


@dataclass(frozen=True)
class Stop:
    pass
