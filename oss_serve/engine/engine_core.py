"""The engine proper: scheduler + model runner + stop checks, stepped by whoever owns it.

`EngineCore.step()` runs one forward over the scheduled batch and returns what each request
produced. It is synchronous and owns no threads: the engine process loops over it, and the
offline `LLM` may drive it directly.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oss_serve.engine.messages import EngineInfo, EngineStats, RequestDelta, RunnerLayout
from oss_serve.engine.model_runner import ModelRunner, PendingInputs
from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.engine.request import PENDING_TOKEN, Request, Status
from oss_serve.engine.sampler import SampledTokens, sample
from oss_serve.engine.sampling_params import InvalidRequest, SamplingParams, check_token_ids
from oss_serve.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from oss_serve.engine.structured.step_masks import StructuredDecoding
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)

KV_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn,
             "fp8_e5m2": torch.float8_e5m2}
# CPU KV budget when neither max_total_tokens nor mem_fraction_static is given: of free RAM.
DEFAULT_CPU_KV_FRACTION = 0.2
DEFAULT_GPU_MEM_FRACTION = 0.85
DEFAULT_MAX_RUNNING_REQUESTS = 256
DEFAULT_CUDA_GRAPH_MAX_BS = 256
# A budget-sized KV pool smaller than this is a misconfiguration (the weights filled the device,
# or the fraction is tiny), not something to serve with.
MIN_KV_TOKENS = 1024


def default_sampling_params(folder: Path | str) -> SamplingParams:
    """SamplingParams with the checkpoint's generation_config.json defaults filled in."""
    params = SamplingParams()
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        if config.get("do_sample") is False:
            params.temperature = 0.0
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            if config.get(name) is not None:
                setattr(params, name, type(getattr(params, name))(config[name]))
        if config.get("max_new_tokens") is not None:
            params.max_new_tokens = int(config["max_new_tokens"])
    return params


def generation_eos_ids(folder: Path | str) -> tuple[int, ...]:
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()


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


def _available_ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def plan_kv_pools(args: ServerArgs, layer_windows: list[int | None], num_kv_heads: int, head_dim: int,
                  kv_dtype: torch.dtype, device: torch.device, context_length: int) -> tuple[int, int]:
    """(full pages, sliding pages). Sliding layers need only about a window per running request
    plus one prefill chunk, so their pool is capped there and the rest of the budget goes to full layers."""
    ps = args.page_size
    page_bytes = PagedKVCache.bytes_per_page(ps, num_kv_heads, head_dim, kv_dtype)
    num_full_layers = sum(1 for w in layer_windows if w is None)
    num_sliding_layers = len(layer_windows) - num_full_layers
    window = max((w for w in layer_windows if w is not None), default=0)
    max_running = args.max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS
    step_pages = -(-min(args.chunked_prefill_size, args.max_prefill_tokens) // ps)
    sliding_cap = (max_running * (-(-window // ps) + 1) + step_pages + 2) if num_sliding_layers else 0
    if args.max_total_tokens is not None:
        full_pages = -(-args.max_total_tokens // ps)
        return full_pages, min(full_pages, sliding_cap) if num_sliding_layers else 0
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        fraction = args.mem_fraction_static or DEFAULT_GPU_MEM_FRACTION
        budget = free - (1 - fraction) * total
    else:
        budget = (args.mem_fraction_static or DEFAULT_CPU_KV_FRACTION) * _available_ram_bytes()
    budget = max(budget, 0)
    # Never more full pages than every running request at full context could use.
    full_cap = max_running * -(-context_length // ps) + 1
    full_pages = int((budget - sliding_cap * page_bytes * num_sliding_layers) // max(1, page_bytes * num_full_layers))
    if full_pages < sliding_cap:  # small budget: split evenly
        full_pages = int(budget // (page_bytes * len(layer_windows)))
    if full_pages * ps < MIN_KV_TOKENS:
        raise ValueError(f"the KV cache budget of {budget / 2**20:.1f} MiB holds only {max(full_pages, 0) * ps} tokens "
                         f"({page_bytes * len(layer_windows)} bytes per {ps}-token page over all layers); raise "
                         f"--mem-fraction-static or set --max-total-tokens")
    full_pages = min(full_pages, full_cap)
    return full_pages, (min(full_pages, sliding_cap) if num_sliding_layers else 0)


class EngineCore:
    def __init__(self, args: ServerArgs, model: torch.nn.Module | None = None, model_folder: Path | str | None = None
                 ) -> None:
        """Loads the model from `args` unless one is passed in (tests)."""
        self.tp = None  # rank 0's TensorParallelLeader when args.tp_size > 1
        if model is None and args.tp_size > 1:
            from oss_serve.engine.tp_launcher import TensorParallelLeader

            self.tp = TensorParallelLeader(args)
            model, model_folder = self.tp.loaded.model, self.tp.loaded.folder
        if model is None:
            from oss_serve.model.loader import load_model

            loaded = load_model(args.model_path, dtype=args.dtype, device=args.device, load_format=args.load_format,
                                revision=args.revision, seed=args.random_seed, moe_backend=args.moe_backend)
            model, model_folder = loaded.model, loaded.folder
        self.model = model
        config = model.config
        self.model_folder = Path(model_folder or args.model_path)
        self.args = args
        param = next(model.parameters())
        self.device, self.model_dtype = param.device, param.dtype
        self.context_length = min(args.context_length or config.max_position_embeddings,
                                  config.max_position_embeddings)
        kv_dtype = self.model_dtype if args.kv_cache_dtype == "auto" else KV_DTYPES[args.kv_cache_dtype]
        layer_windows = [config.window_of(i) for i in range(config.num_layers)]
        num_full_pages, num_sliding_pages = plan_kv_pools(args, layer_windows, config.num_kv_heads, config.head_dim,
                                                          kv_dtype, self.device, self.context_length)
        ps = args.page_size
        window = max((w for w in layer_windows if w is not None), default=None)
        chunk = min(args.chunked_prefill_size, args.max_prefill_tokens)
        if num_sliding_pages:
            # A chunk plus the window before it must fit the sliding pool.
            chunk = max(1, min(chunk, (num_sliding_pages - 2) * ps - window))
        chunk = max(1, min(chunk, (num_full_pages - 1) * ps))
        max_running = args.max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS
        self.scheduler = Scheduler(SchedulerConfig(
            page_size=ps, num_full_pages=num_full_pages, num_sliding_pages=num_sliding_pages,
            sliding_window=window, max_running_requests=max_running,
            max_step_tokens=max(args.max_prefill_tokens, chunk), chunk_size=chunk,
            enable_prefix_cache=not args.disable_radix_cache))
        self.cache = PagedKVCache(layer_windows, num_full_pages, num_sliding_pages, ps, config.num_kv_heads,
                                  config.head_dim, kv_dtype, self.device)
        # A sequence must fit the full-attention pool.
        self.context_length = min(self.context_length, num_full_pages * ps)
        max_pages_per_seq = -(-self.context_length // ps)
        if self.tp is not None:  # workers build the same page pools, each holding its own KV heads
            self.runner = self.tp.make_runner(
                RunnerLayout(layer_windows, num_full_pages, num_sliding_pages, ps, kv_dtype, max_running,
                             max_pages_per_seq), model, self.cache, self.device, args.attention_backend)
        else:
            self.runner = ModelRunner(model, self.cache, self.device, args.attention_backend, max_running,
                                      max_pages_per_seq)
        # Graphs need kernels without host syncs: the Triton attention and MXFP4 MoE paths.
        graphable = args.attention_backend != "torch" and getattr(model, "packed_mxfp4", False)
        if self.device.type == "cuda" and not args.disable_cuda_graph and not graphable:
            logger.info("CUDA graphs off: they need the Triton attention and MXFP4 MoE backends")
        if self.device.type == "cuda" and not args.disable_cuda_graph and graphable:
            try:
                self.runner.enable_cuda_graphs(min(args.cuda_graph_max_bs or DEFAULT_CUDA_GRAPH_MAX_BS, max_running))
            except RuntimeError as error:
                raise RuntimeError(f"capturing CUDA graphs failed ({error}); --disable-cuda-graph runs without "
                                   "them") from error
        # Schedule step N+1 while the device runs step N. Not on CPU, where the forward holds the host (it
        # would only delay each token by a step).
        self.overlap = self.device.type == "cuda" and not args.disable_overlap_schedule
        self._in_flight: InFlightStep | None = None
        self._step_deltas: list[RequestDelta] = []
        self._step_requests: list[Request] = []
        logger.info("KV cache: %d tokens per full-attention layer, %d per sliding-window layer, page size %d, %s; "
                    "context length %d", num_full_pages * ps, num_sliding_pages * ps, ps,
                    str(kv_dtype).removeprefix("torch."), self.context_length)
        self.eos_token_ids = tuple(dict.fromkeys(generation_eos_ids(self.model_folder) + tuple(config.eos_token_ids)))
        self.default_params = default_sampling_params(self.model_folder)
        self.structured = StructuredDecoding(Path(args.tokenizer_path or self.model_folder) / "tokenizer.json",
                                             config.vocab_size, self.eos_token_ids, self.device)
        self._tokenizer = None
        self._requests: dict[str, Request] = {}
        self._seed_rng = random.Random(args.random_seed)
        self.step_times: list[StepTiming] = []  # when profiling
        self.profile = False

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
        """Schedule and queue a step's forward; read what the previous step drew (overlapped schedule) while
        the device runs it; queue the sampling; then, without the overlap, read this step's draws."""
        started = time.perf_counter()
        # Kept on self so that a step failing halfway still hands out what it had decided (fail_step).
        deltas = self._step_deltas = []
        previous, self._in_flight = self._in_flight, None
        self._step_requests = [] if previous is None else list(previous.requests)
        batch = self.scheduler.schedule()
        self._step_requests += [seq.request for seq in batch]
        scheduled = time.perf_counter()
        logits = None
        if batch:
            sample_rows = [i for i, seq in enumerate(batch)
                           if seq.request.num_computed + seq.num_new_tokens == len(seq.request.token_ids)]
            sampled_requests = [batch[i].request for i in sample_rows]
            if previous is None:  # every token is known: grammar masks are filled while the forward runs
                self.structured.begin_step(sampled_requests)
            logits = self.runner.forward(batch, sample_rows, self._pending_inputs(batch, previous),
                                         None if previous is None else previous.sampled.tokens)
        if previous is not None:
            tokens, logprobs = self._take(previous)
            if logits is not None:  # the masks needed those tokens; filled while the rest of the read runs
                self.structured.begin_step(sampled_requests)
            deltas += self._book(previous, tokens, logprobs)
        sampled = None
        if logits is not None:
            sampled = sample(logits, sampled_requests)
            if self.profile:
                sampled.wait()  # the device's time counts as the forward's
        forward_time = time.perf_counter() - scheduled
        for request in self.scheduler.unservable:
            # Alone and still out of pages: the sequence is longer than the whole KV pool.
            if request.status is not Status.FINISHED:  # (it may have stopped on the token just read)
                deltas.append(self._finish(request, "length", None))
        if batch:
            self.scheduler.after_forward([seq for seq in batch if seq.request.status is Status.RUNNING])
            if sampled is not None:
                for request in sampled_requests:
                    if request.status is not Status.FINISHED:
                        request.token_ids.append(PENDING_TOKEN)
                self._in_flight = InFlightStep(sampled_requests, sampled)
                if not self.overlap or self.profile:  # profiling times each step alone
                    deltas += self._book(self._in_flight, *self._take(self._in_flight))
                    self._in_flight = None
            if self.profile:
                self.step_times.append(StepTiming(time.perf_counter() - started, scheduled - started, forward_time,
                                                  len(batch), sum(seq.num_new_tokens for seq in batch)))
        self._step_deltas, self._step_requests = [], []
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

    def request_state(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at interpreter exit)."""
        if self.tp is not None:
            self.tp.shutdown()
