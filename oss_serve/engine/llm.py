"""Offline batch generation: `LLM(model_path, **engine_args).generate(prompts, sampling_params)`.

The offline API drives an EngineCore in the calling process: a batch job has nothing else to do
while the model runs, so a second process would only add transfer cost. The async API for the
server (`oss_serve.engine.async_engine`) runs the same core in its own process.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from oss_serve.engine.detokenizer import detokenize_all
from oss_serve.engine.engine_core import EngineCore
from oss_serve.engine.messages import RequestDelta
from oss_serve.engine.outputs import RequestOutput, TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs

Prompt = str | list[int]


def make_server_args(model_path: str, engine_args: dict) -> ServerArgs:
    names = {f.name for f in dataclasses.fields(ServerArgs)}
    unknown = sorted(set(engine_args) - names)
    if unknown:
        raise TypeError(f"unknown engine arguments: {', '.join(unknown)}")
    args = ServerArgs(model_path=str(model_path), **engine_args)
    args.validate()
    return args


def expand_n(params: SamplingParams) -> list[SamplingParams]:
    """n > 1 runs as n requests; a seeded request gets seeds seed, seed+1, ... so samples differ."""
    if params.n == 1:
        return [params]
    copies = []
    for i in range(params.n):
        one = copy.deepcopy(params)
        one.n = 1
        if params.seed is not None:
            one.seed = params.seed + i
        copies.append(one)
    return copies


class LLM:
    def __init__(self, model_path: str, **engine_args) -> None:
        self.args = make_server_args(model_path, engine_args)
        self.engine = EngineCore(self.args)
        self._counter = 0

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def _text(self, ids: list[int], params: SamplingParams, matched_stop: int | str | None) -> str:
        try:
            tokenizer = self.tokenizer
        except FileNotFoundError:
            return ""  # a checkpoint without tokenizer.json (dummy weights): token ids only
        return detokenize_all(tokenizer, ids, params, matched_stop)

    def default_sampling_params(self) -> SamplingParams:
        return copy.deepcopy(self.engine.default_params)

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt; with n > 1 it is the first sample and `.samples` holds all n."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.default_sampling_params()
        params_list = (list(sampling_params) if isinstance(sampling_params, Sequence)
                       else [sampling_params] * len(prompts))
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        submitted: list[list[_Sample]] = []
        for prompt, params in zip(prompts, params_list):
            params.validate()
            prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.engine.validate_prompt(prompt_ids)
            submitted.append([self._new_sample(prompt_ids, one) for one in expand_n(params)])
        self._run([sample for samples in submitted for sample in samples])
        results = []
        for samples in submitted:
            outputs = [self._output(sample) for sample in samples]
            if len(outputs) > 1:
                outputs[0].samples = outputs
            results.append(outputs[0])
        return results

    def _new_sample(self, prompt_ids: list[int], params: SamplingParams) -> _Sample:
        self._counter += 1
        return _Sample(f"offline-{self._counter}", prompt_ids, params)

    def _run(self, samples: list[_Sample]) -> None:
        """Queue every sample and step the engine until all have finished."""
        by_id = {sample.request_id: sample for sample in samples}
        try:
            for sample in samples:
                sample.final = self.engine.add_request(sample.request_id, sample.prompt_ids, sample.params)
        except Exception:
            # A request refused halfway (say, a grammar that does not compile): take back the ones
            # already queued, so the next generate() starts from a clean engine.
            for sample in samples:
                self.engine.abort(sample.request_id)
            raise
        while self.engine.has_work:
            for delta in self.engine.step():
                sample = by_id[delta.request_id]
                sample.token_ids.extend(delta.new_token_ids)
                sample.logprobs.extend(delta.new_logprobs or ())
                if delta.finished:
                    sample.final = delta

    def _output(self, sample: _Sample) -> RequestOutput:
        final = sample.final
        return RequestOutput(
            request_id=sample.request_id, prompt_token_ids=sample.prompt_ids, token_ids=sample.token_ids,
            text=self._text(sample.token_ids, sample.params, final.matched_stop),
            finish_reason=final.finish_reason, matched_stop=final.matched_stop, num_cached_tokens=final.cached_tokens,
            logprobs=sample.logprobs if sample.params.logprobs else None)


@dataclasses.dataclass
class _Sample:
    """One engine request of an offline batch, and what it has produced so far."""
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    final: RequestDelta | None = None  # its last delta, once finished
