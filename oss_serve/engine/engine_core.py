"""The engine proper: scheduler + model runner + stop checks, stepped by whoever owns it.

`EngineCore.step()` runs one forward over the scheduled batch and returns what each request
produced. It is synchronous and owns no threads: the engine process loops over it, and the
offline `LLM` may drive it directly.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oss_serve.engine.generation_config import default_sampling_params, generation_eos_ids
from oss_serve.engine.limits import plan_engine_limits
from oss_serve.engine.messages import EngineInfo, EngineStats, RequestDelta, RunnerLayout
from oss_serve.engine.model_runner import ModelRunner, PendingInputs
from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.engine.request import PENDING_TOKEN, Request, Status
from oss_serve.engine.sampler import SampledTokens, sample
from oss_serve.engine.sampling_params import InvalidRequest, SamplingParams, check_token_ids
from oss_serve.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig, StepSchedule
from oss_serve.engine.structured.step_masks import StructuredDecoding
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)


def validate_prompt(prompt_ids: list[int], context_length: int, vocab_size: int) -> None:
    """InvalidRequest for an empty prompt, one longer than the context (the message gives both numbers), or
    a token id outside the vocabulary (which would index past the embedding)."""
    if not prompt_ids:
        raise InvalidRequest("prompt", "is empty")
    if len(prompt_ids) > context_length:
        raise InvalidRequest("prompt", f"has {len(prompt_ids)} tokens, longer than the context length "
                                       f"of {context_length} tokens")
    check_token_ids(prompt_ids, vocab_size, "prompt")


@dataclass(frozen=True)
class StepTiming:
    """One step's wall times in seconds (recorded while `EngineCore.profile` is on)."""
    total: float
    schedule: float
    forward: float  # the runner: inputs, forward, sampling (ends with the device sync; no overlap meanwhile)
    num_seqs: int
    num_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == self.num_seqs


@dataclass(frozen=True)
class InFlightStep:
    """A queued step whose draws the host has not read yet: row i of `sampled` is `requests[i]`'s token."""
    requests: list[Request]
    sampled: SampledTokens


class EngineCore:
    def __init__(self, args: ServerArgs) -> None:
        self.args = args
        self.tp = None  # rank 0's TensorParallelLeader when args.tp_size > 1
        if args.tp_size > 1:
            from oss_serve.engine.tp_launcher import TensorParallelLeader

            self.tp = TensorParallelLeader(args)
            loaded = self.tp.loaded
        else:
            from oss_serve.model.loader import load_model

            loaded = load_model(args.model_path, dtype=args.dtype, device=args.device, load_format=args.load_format,
                                revision=args.revision, seed=args.random_seed, moe_backend=args.moe_backend)
        self.model, self.model_folder = loaded.model, Path(loaded.folder)
        config = self.model.config
        param = next(self.model.parameters())
        self.device, self.model_dtype = param.device, param.dtype
        limits = self.limits = plan_engine_limits(args, config, self.model_dtype, self.device)
        self.context_length = limits.context_length
        self.scheduler = Scheduler(SchedulerConfig(
            page_size=limits.page_size, num_full_pages=limits.num_full_pages,
            num_sliding_pages=limits.num_sliding_pages, sliding_window=limits.sliding_window,
            max_running_requests=limits.max_running, max_step_tokens=max(args.max_prefill_tokens, limits.chunk_size),
            chunk_size=limits.chunk_size, enable_prefix_cache=not args.disable_radix_cache))
        self.cache = PagedKVCache(limits.layer_windows, limits.num_full_pages, limits.num_sliding_pages,
                                  limits.page_size, config.num_kv_heads, config.head_dim, limits.kv_dtype, self.device)
        self.runner = self._make_runner()
        # Schedule step N+1 while the device runs step N. Not on CPU, where the forward holds the host (it
        # would only delay each token by a step).
        self.overlap = self.device.type == "cuda" and not args.disable_overlap_schedule
        self._in_flight: InFlightStep | None = None
        self._step_deltas: list[RequestDelta] = []
        self._step_requests: list[Request] = []
        logger.info("KV cache: %d tokens per full-attention layer, %d per sliding-window layer, page size %d, %s; "
                    "context length %d", limits.num_full_pages * limits.page_size,
                    limits.num_sliding_pages * limits.page_size, limits.page_size,
                    str(limits.kv_dtype).removeprefix("torch."), self.context_length)
        self.eos_token_ids = tuple(dict.fromkeys(generation_eos_ids(self.model_folder) + tuple(config.eos_token_ids)))
        self.default_params = default_sampling_params(self.model_folder)
        self.structured = StructuredDecoding(Path(args.tokenizer_path or self.model_folder) / "tokenizer.json",
                                             config.vocab_size, self.eos_token_ids, self.device)
        self._tokenizer = None
        self._requests: dict[str, Request] = {}
        self._seed_rng = random.Random(args.random_seed)
        self.step_times: list[StepTiming] = []  # when profiling
        self.profile = False

    def _make_runner(self) -> ModelRunner:
        args, limits = self.args, self.limits
        if self.tp is not None:  # workers build the same page pools, each holding its own KV heads
            runner = self.tp.make_runner(
                RunnerLayout(limits.layer_windows, limits.num_full_pages, limits.num_sliding_pages, limits.page_size,
                             limits.kv_dtype, limits.max_running, limits.max_pages_per_seq),
                self.model, self.cache, self.device, args.attention_backend)
        else:
            runner = ModelRunner(self.model, self.cache, self.device, args.attention_backend, limits.max_running,
                                 limits.max_pages_per_seq)
        if self.device.type != "cuda" or args.disable_cuda_graph:
            return runner
        # Graphs need kernels without host syncs: the Triton attention and MXFP4 MoE paths.
        if args.attention_backend == "torch" or not getattr(self.model, "packed_mxfp4", False):
            logger.info("CUDA graphs off: they need the Triton attention and MXFP4 MoE backends")
            return runner
        try:
            runner.enable_cuda_graphs(limits.cuda_graph_max_bs)
        except RuntimeError as error:
            raise RuntimeError(f"capturing CUDA graphs failed ({error}); --disable-cuda-graph runs without "
                               "them") from error
        return runner

    @property
    def info(self) -> EngineInfo:
        ps = self.args.page_size
        return EngineInfo(str(self.model_folder), self.context_length, self.model.config.vocab_size,
                          self.eos_token_ids,
                          self.scheduler.full_pool.num_pages * ps,
                          (self.scheduler.sliding_pool.num_pages * ps) if self.scheduler.sliding_pool else 0,
                          ps, self.default_params)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from oss_serve.model.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_pretrained(self.args.tokenizer_path or self.model_folder)
        return self._tokenizer

    # ---- requests ----------------------------------------------------------------------------
    def validate_prompt(self, prompt_ids: list[int]) -> None:
        validate_prompt(prompt_ids, self.context_length, self.model.config.vocab_size)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> RequestDelta | None:
        """Queue a request. Returns its final delta at once when there is nothing to generate."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        self.validate_prompt(prompt_ids)
        params.validate(self.model.config.vocab_size)
        room = self.context_length - len(prompt_ids)
        max_new = room if params.max_new_tokens is None else min(params.max_new_tokens, room)
        seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(63)
        request = Request(request_id, list(prompt_ids), params, max_new, random.Random(seed))
        if params.structured is not None:  # compiles the grammars: a bad one fails here, as a ValueError
            request.constraint = self.structured.new_constraint(params.structured, prompt_ids, max_new)
        if params.stop:
            _ = self.tokenizer  # fail now, not mid-generation, if stop strings cannot be checked
        if max_new == 0:
            request.status = Status.FINISHED
            request.finish_reason = "length"
            request.num_cached_tokens = 0
            return self._delta(request, finished=True)
        self._requests[request_id] = request
        self.scheduler.add(request)
        return None

    def abort(self, request_id: str) -> RequestDelta | None:
        """Drop a request and free its pages now. Returns its final delta, or None if unknown."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.remove(request)
        if request.awaits_token:  # drawn by a step still in flight: dropped with the request
            request.token_ids.pop()
        request.finish_reason = "abort"
        return self._delta(request, finished=True)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._in_flight is not None

    def flush_cache(self) -> bool:
        """Drop every prefix-cached page; refused (False) while requests run, as SGLang does."""
        if self.has_work:
            return False
        if self.scheduler.prefix_cache is not None:
            self.scheduler.prefix_cache.clear()
        return True

    def stats(self) -> EngineStats:
        return self.scheduler.stats(self.args.page_size)

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """Run one scheduler step; return what every request produced."""
        # Profiling times each step alone.
        return self._step_overlapped() if self.overlap and not self.profile else self._step_plain()

    def _step_plain(self) -> list[RequestDelta]:
        """Schedule, run the forward and the sampling, read this step's draws."""
        started = time.perf_counter()
        # Kept on self so that a step failing halfway still hands out what it had decided (fail_step).
        deltas = self._step_deltas = []
        if self._in_flight is not None:  # left by an overlapped step before the switch
            deltas += self._book(self._in_flight, *self._take(self._in_flight))
            self._in_flight = None
        schedule = self.scheduler.schedule()
        self._step_requests = [seq.request for seq in schedule.batch]
        scheduled = time.perf_counter()
        sampled_requests = self._sample_rows(schedule.batch)
        self.structured.begin_step(sampled_requests)  # every token is known: masks fill during the forward
        step = self._forward_and_sample(schedule.batch, sampled_requests, None)
        if self.profile and step is not None:
            step.sampled.wait()  # the device's time counts as the forward's
        forward_time = time.perf_counter() - scheduled
        deltas += self._after_forward(schedule, step)
        if step is not None:
            deltas += self._book(step, *self._take(step))
        if self.profile and schedule.batch:
            self.step_times.append(StepTiming(time.perf_counter() - started, scheduled - started, forward_time,
                                              len(schedule.batch), sum(s.num_new_tokens for s in schedule.batch)))
        self._step_deltas, self._step_requests = [], []
        return deltas

    def _step_overlapped(self) -> list[RequestDelta]:
        """Schedule and queue this step's forward, read the previous step's draws while the device runs it,
        and leave this step's draws in flight for the next step to read."""
        deltas = self._step_deltas = []
        previous, self._in_flight = self._in_flight, None
        self._step_requests = [] if previous is None else list(previous.requests)
        schedule = self.scheduler.schedule()
        self._step_requests += [seq.request for seq in schedule.batch]
        sampled_requests = self._sample_rows(schedule.batch)
        if previous is None:
            self.structured.begin_step(sampled_requests)
            step = self._forward_and_sample(schedule.batch, sampled_requests, None)
        else:
            # The grammar masks need the previous draws: they fill once those are read, during this forward.
            logits = self._forward(schedule.batch, sampled_requests, previous)
            tokens, logprobs = self._take(previous)
            self.structured.begin_step(sampled_requests)
            deltas += self._book(previous, tokens, logprobs)
            step = None if logits is None else InFlightStep(sampled_requests, sample(logits, sampled_requests))
        deltas += self._after_forward(schedule, step)
        self._in_flight = step
        self._step_deltas, self._step_requests = [], []
        return deltas

    @staticmethod
    def _sample_rows(batch: list[ScheduledSeq]) -> list[Request]:
        """The requests that draw a token this step: those whose step reaches the end of their tokens."""
        return [seq.request for seq in batch
                if seq.request.num_computed + seq.num_new_tokens == len(seq.request.token_ids)]

    def _forward(self, batch: list[ScheduledSeq], sampled_requests: list[Request],
                 previous: InFlightStep | None) -> torch.Tensor | None:
        if not batch:
            return None
        sampled_ids = {id(request) for request in sampled_requests}
        sample_rows = [i for i, seq in enumerate(batch) if id(seq.request) in sampled_ids]
        return self.runner.forward(batch, sample_rows, self._pending_inputs(batch, previous),
                                   None if previous is None else previous.sampled.tokens)

    def _forward_and_sample(self, batch: list[ScheduledSeq], sampled_requests: list[Request],
                            previous: InFlightStep | None) -> InFlightStep | None:
        logits = self._forward(batch, sampled_requests, previous)
        return None if logits is None else InFlightStep(sampled_requests, sample(logits, sampled_requests))

    def _after_forward(self, schedule: StepSchedule, step: InFlightStep | None) -> list[RequestDelta]:
        """Advance the scheduler past the step's KV writes and mark the draws the step still owes."""
        deltas = [self._finish(request, "length", None) for request in schedule.unservable
                  # Alone and still out of pages: longer than the whole KV pool (unless it just stopped).
                  if request.status is not Status.FINISHED]
        if not schedule.batch:
            return deltas
        self.scheduler.after_forward([seq for seq in schedule.batch if seq.request.status is Status.RUNNING])
        if step is not None:
            for request in step.requests:
                if request.status is not Status.FINISHED:
                    request.token_ids.append(PENDING_TOKEN)
        return deltas

    def step_isolated(self) -> list[RequestDelta]:
        """step(), except that a fault the engine can serve on after (see `recoverable`) ends only the
        requests of that step, each with an error delta, and is logged once; any other fault is raised."""
        try:
            return self.step()
        except Exception as error:
            if not self.recoverable(error):
                raise
            logger.exception("a step failed: its requests end with an error, the engine serves on")
            return self.fail_step(error)

    def fail_step(self, error: BaseException) -> list[RequestDelta]:
        """After step() raised: end the requests that step was running (its batch and the draws in flight)
        with an error, hand out what it had decided for the others, and be ready for the next step."""
        deltas, self._step_deltas = self._step_deltas, []
        involved, self._step_requests = self._step_requests, []
        self._in_flight = None
        message = f"the engine failed while running this request ({type(error).__name__}: {error})"
        for request in dict.fromkeys(involved):  # a request can be in both; once each, in order
            if request.status is Status.FINISHED:
                continue
            self.scheduler.remove(request)
            self._requests.pop(request.request_id, None)
            if request.awaits_token:
                request.token_ids.pop()
            delta = self._delta(request, finished=True)
            delta.error, delta.error_status = message, 500
            deltas.append(delta)
        return deltas

    def recoverable(self, error: BaseException) -> bool:
        """Whether the engine can serve on after `error` ended a step. Not under tensor parallelism (the
        workers may be inside a collective the leader left), nor when the device itself is broken (a
        CUDA error is sticky: the next call on the device fails too)."""
        if self.tp is not None:
            return False
        if self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
            except Exception:  # noqa: BLE001 - any failure here means the device is unusable
                return False
        return True

    @staticmethod
    def _pending_inputs(batch: list[ScheduledSeq], previous: InFlightStep | None) -> PendingInputs | None:
        """Where this step's inputs still on the device are: decode rows whose last token `previous` drew."""
        if previous is None:
            return None
        source_of = {id(request): i for i, request in enumerate(previous.requests)}
        rows, sources = [], []
        offset = 0  # of the sequence's first new token among the step's input ids
        for seq in batch:
            if seq.request.awaits_token:
                rows.append(offset)
                sources.append(source_of[id(seq.request)])
            offset += seq.num_new_tokens
        return PendingInputs(rows, sources, len(previous.requests)) if rows else None

    @staticmethod
    def _take(step: InFlightStep) -> tuple[list[int], list[TokenLogprob | None]]:
        """A step's draws (waiting for the device), with the grammars advanced: the next masks may start."""
        tokens, logprobs = step.sampled.resolve()
        for request, token in zip(step.requests, tokens):
            if request.constraint is not None and request.status is not Status.FINISHED:
                request.constraint.advance(token)
                request.step_masks = None
        return tokens, logprobs

    def _book(self, step: InFlightStep, tokens: list[int], logprobs: list[TokenLogprob | None]
              ) -> list[RequestDelta]:
        """Append each token taken, check stops, finish requests."""
        deltas = []
        for request, token, logprob in zip(step.requests, tokens, logprobs):
            if request.status is Status.FINISHED:  # aborted or ended while its draw was in flight
                continue
            delta = self._append_token(request, token, logprob)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def _append_token(self, request: Request, token: int, logprob: TokenLogprob | None) -> RequestDelta | None:
        params = request.params
        request.token_ids[-1] = token  # was PENDING_TOKEN
        request.pending_ids.append(token)
        if logprob is not None:
            request.pending_logprobs.append(logprob)
        if params.frequency_penalty or params.presence_penalty:
            counts = request.output_counts = request.output_counts or {}
            counts[token] = counts.get(token, 0) + 1
        if not params.ignore_eos and token in self.eos_token_ids:
            return self._finish(request, "stop", token)
        if token in params.stop_token_ids:
            return self._finish(request, "stop", token)
        if params.stop:
            matched = self._matched_stop_string(request)
            if matched is not None:
                return self._finish(request, "stop", matched)
        if request.num_output_tokens >= request.max_new_tokens or len(request.token_ids) >= self.context_length:
            return self._finish(request, "length", None)
        if len(request.pending_ids) >= self.args.stream_interval:
            return self._delta(request, finished=False)
        return None

    def _matched_stop_string(self, request: Request) -> str | None:
        longest = max(len(s) for s in request.params.stop)
        # A character spans at most 4 byte-level tokens; look back far enough to see any stop whole.
        ids, num_prompt = request.token_ids, len(request.prompt_ids)
        tail_ids = ids[max(num_prompt, len(ids) - (4 * longest + 4)):]  # no copy of the whole output
        tail = self.tokenizer.decode(tail_ids, skip_special_tokens=request.params.skip_special_tokens)
        # Only stops that end inside the newest token's text can be new.
        newest = len(self.tokenizer.decode(tail_ids[-1:], skip_special_tokens=request.params.skip_special_tokens))
        window = tail[-(longest + newest):] if newest else tail[-longest:]
        for stop in request.params.stop:
            if stop and stop in window:
                return stop
        return None

    def _finish(self, request: Request, reason: str, matched: int | str | None) -> RequestDelta:
        request.finish_reason = reason
        request.matched_stop = matched
        self.scheduler.finish(request)
        self._requests.pop(request.request_id, None)
        return self._delta(request, finished=True)

    def _delta(self, request: Request, finished: bool) -> RequestDelta:
        delta = RequestDelta(
            request_id=request.request_id, new_token_ids=request.pending_ids,
            new_logprobs=request.pending_logprobs if request.params.logprobs else None,
            prompt_tokens=request.num_prompt_tokens, completion_tokens=request.num_output_tokens,
            cached_tokens=max(0, request.num_cached_tokens), finished=finished,
            finish_reason=request.finish_reason if finished else None,
            matched_stop=request.matched_stop if finished else None)
        request.pending_ids, request.pending_logprobs = [], []
        return delta

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at interpreter exit)."""
        if self.tp is not None:
            self.tp.shutdown()
