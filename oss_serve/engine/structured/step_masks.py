"""Token masks for one engine step, computed on a worker thread while the forward runs.

`StructuredDecoding.begin_step` is called as soon as every constrained request's next-token rule is
known (it depends only on tokens taken so far): once the batch is scheduled, or with the overlapped
schedule once the previous step's tokens are read, the forward being queued by then. The grammar
masks are filled in parallel by llguidance's thread pool (which drops the GIL) while the model
computes the logits. The sampler then waits for the masks (usually long done) and applies
them in place to the rows that need them: on a GPU one kernel reads the packed bits, on CPU the
worker has unpacked them into bytes that the sampler adds, times the lowest float, to the logits.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from llguidance import LLExecutor, LLTokenizer

from oss_serve.engine.structured.constraint import BannedStep, ForcedStep, GrammarStep, RequestConstraint
from oss_serve.engine.structured.grammar import load_tokenizer
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.kernels.async_copy import to_device
from oss_serve.kernels.token_mask import mask_tokens_

if TYPE_CHECKING:
    from oss_serve.engine.request import Request

logger = logging.getLogger(__name__)
# Half the cores this process may use (2 to 8): the masks must be ready when a CUDA-graph decode step
# (a few ms) ends, and the other half stays free for the thread that drives the forward.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 4)
MASK_THREADS = max(2, min(8, _CORES // 2))
_GRAMMAR_END_WORD, _GRAMMAR_END_BIT = divmod(harmony_ids.RETURN, 32)


@dataclass
class StepMasks:
    """The masks of one step's sampled rows, keyed by request (by identity)."""
    vocab_size: int
    grammar_rows: dict[int, int] = field(default_factory=dict)  # id(request) -> row in the bitmask
    forced: dict[int, int] = field(default_factory=dict)  # id(request) -> the only allowed token
    banned: dict[int, tuple[int, ...]] = field(default_factory=dict)  # id(request) -> disallowed tokens
    # Grammar rows' disallowed tokens: packed int32 bits on the way to a GPU, unpacked 0/1 bytes on CPU.
    disallowed: Future[torch.Tensor] | None = None

    def apply(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        """Set every disallowed token of these requests to -inf (grammar rows on CPU: the lowest float), in
        place (the sampler owns the step's logits; the raw logprobs were taken before)."""
        grammar_rows, mask_rows, forced_rows, forced_tokens, banned_rows, banned_tokens = [], [], [], [], [], []
        for row, request in enumerate(requests):
            key = id(request)
            if key in self.grammar_rows:
                grammar_rows.append(row)
                mask_rows.append(self.grammar_rows[key])
            elif key in self.forced:
                forced_rows.append(row)
                forced_tokens.append(self.forced[key])
            elif key in self.banned:
                banned_rows.extend([row] * len(self.banned[key]))
                banned_tokens.extend(self.banned[key])
        device = logits.device
        if grammar_rows:
            assert self.disallowed is not None
            disallowed = self.disallowed.result()
            if disallowed.dtype == torch.uint8:  # unpacked by the worker (CPU)
                # Adding the 0/1 bytes times the lowest float takes half the time of a masked fill with them
                # as bools; row by row, since the same add over the whole batch is several times slower.
                lowest = torch.finfo(logits.dtype).min
                for row, mask_row in zip(grammar_rows, mask_rows):
                    logits[row].add_(disallowed[mask_row], alpha=lowest)
            else:
                mask_tokens_(logits, disallowed.to(device, non_blocking=True), grammar_rows, mask_rows)
        if forced_rows:
            rows = to_device(forced_rows, torch.int64, device)
            tokens = to_device(forced_tokens, torch.int64, device)
            kept = logits[rows, tokens]
            logits[rows] = float("-inf")
            logits[rows, tokens] = torch.nan_to_num(kept, neginf=0.0)  # never -inf: it must stay pickable
        if banned_rows:
            rows, tokens = (to_device(values, torch.int64, device) for values in (banned_rows, banned_tokens))
            logits[rows, tokens] = float("-inf")
        return logits


class StructuredDecoding:
    """The engine's side of structured outputs: makes request constraints and each step's masks."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, eos_token_ids: Sequence[int],
                 device: torch.device) -> None:
        self._tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self._eos_token_ids = tuple(eos_token_ids)
        self._device = device
        self._worker: ThreadPoolExecutor | None = None
        self._executor: LLExecutor | None = None
        # Page-locked, so the copy to the GPU is one DMA; rewriting it is safe: the next step's fill starts
        # only after the engine has read this step's draws, which waits for the copy queued before them.
        self._pinned: torch.Tensor | None = None

    @property
    def tokenizer(self) -> LLTokenizer:
        return load_tokenizer(self._tokenizer_json, self.vocab_size)

    def new_constraint(self, spec: StructuredOutput, prompt_ids: Sequence[int], max_new_tokens: int
                       ) -> RequestConstraint:
        """Raises GrammarError (a ValueError) when a grammar does not compile."""
        return RequestConstraint(spec, prompt_ids, self.tokenizer, max_new_tokens, self._eos_token_ids)

    def begin_step(self, requests: Sequence[Request]) -> StepMasks | None:
        """Start computing the masks of the requests about to be sampled; each constrained
        request's `step_masks` points at the result until its token is taken."""
        constrained = [request for request in requests if request.constraint is not None]
        if not constrained:
            return None
        masks = StepMasks(self.vocab_size)
        grammar_steps: list[GrammarStep] = []
        for request in constrained:
            step = request.constraint.next_step_mask()
            key = id(request)
            if isinstance(step, GrammarStep):
                masks.grammar_rows[key] = len(grammar_steps)
                grammar_steps.append(step)
            elif isinstance(step, ForcedStep):
                masks.forced[key] = step.token
            elif isinstance(step, BannedStep):
                masks.banned[key] = step.tokens
            request.step_masks = masks
        if grammar_steps:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
                self._executor = LLExecutor(num_threads=MASK_THREADS)
            masks.disallowed = self._worker.submit(self._fill, grammar_steps)
        return masks

    def _host_bitmask(self, rows: int, words: int) -> tuple[np.ndarray, torch.Tensor]:
        """A zeroed [rows, words] int32 bitmask as numpy (for llguidance) and torch (same memory)."""
        if self._device.type != "cuda":
            bitmask = np.zeros((rows, words), dtype=np.int32)
            return bitmask, torch.from_numpy(bitmask)
        if self._pinned is None or self._pinned.shape[0] < rows:
            self._pinned = torch.empty((max(rows, 64), words), dtype=torch.int32, pin_memory=True)
        tensor = self._pinned[:rows]
        bitmask = tensor.numpy()
        bitmask.fill(0)
        return bitmask, tensor

    def _fill(self, steps: list[GrammarStep]) -> torch.Tensor:
        assert self._executor is not None
        words = (self.vocab_size + 31) // 32
        bitmask, packed = self._host_bitmask(len(steps), words)
        for step in steps:
            if step.catch_up and not step.matcher.consume_tokens(list(step.catch_up)):
                logger.warning("grammar rejected a sampled token (%s); ending that content", step.matcher.get_error())
        self._executor.unsafe_compute_mask_ptr([(step.matcher, row) for row, step in enumerate(steps)],
                                               bitmask.ctypes.data, words * 4, len(steps))
        # The usual row (the answer, matcher fine, something allowed) is done; others move the end
        # bit to their terminator (a call's `<|call|>`, raw EOS) or, when stuck, allow only it.
        end_bit = np.int32(1 << _GRAMMAR_END_BIT) if _GRAMMAR_END_BIT < 31 else np.int32(-(1 << 31))
        grammar_done = (bitmask[:, _GRAMMAR_END_WORD] & end_bit) != 0
        stuck = ~bitmask.any(axis=1)
        failed = np.fromiter((step.matcher.is_error() for step in steps), dtype=bool, count=len(steps))
        moved = failed | stuck | np.fromiter((step.terminator != harmony_ids.RETURN for step in steps), dtype=bool,
                                             count=len(steps))
        bitmask[moved, _GRAMMAR_END_WORD] &= ~end_bit
        for row in np.flatnonzero(moved & (grammar_done | failed | stuck)).tolist():
            word, bit = divmod(steps[row].terminator, 32)
            bitmask[row, word] |= np.int32(1 << bit) if bit < 31 else np.int32(-(1 << 31))
        np.invert(bitmask, out=bitmask)  # the masks name the disallowed tokens
        if self._device.type == "cpu":  # unpack here, off the critical path
            return torch.from_numpy(np.unpackbits(bitmask.view(np.uint8), axis=1, count=self.vocab_size,
                                                  bitorder="little"))
        return packed


def apply_step_masks(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """The sampler's hook: `logits` with the step's masks applied (the same tensor when none)."""
    masks = next((request.step_masks for request in requests if request.step_masks is not None), None)
    return logits if masks is None else masks.apply(logits, requests)
