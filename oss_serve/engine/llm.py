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

        submitted: list[list[tuple[str, list[int], SamplingParams]]] = []
        for prompt, params in zip(prompts, params_list):
            params.validate()
            prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.engine.validate_prompt(prompt_ids)
            samples = []
            for one in expand_n(params):
                self._counter += 1
                samples.append((f"offline-{self._counter}", prompt_ids, one))
            submitted.append(samples)

        finished: dict[str, object] = {}
        token_ids: dict[str, list[int]] = {}
        logprobs: dict[str, list[TokenLogprob]] = {}
        try:
            for samples in submitted:
                for request_id, prompt_ids, params in samples:
                    token_ids[request_id], logprobs[request_id] = [], []
                    delta = self.engine.add_request(request_id, prompt_ids, params)
                    if delta is not None:
                        finished[request_id] = delta
        except Exception:
            # A request refused halfway (say, a grammar that does not compile): take back the ones
            # already queued, so the next generate() starts from a clean engine.
            for request_id in token_ids:
                self.engine.abort(request_id)
            raise
        while self.engine.has_work:
            for delta in self.engine.step():
                token_ids[delta.request_id].extend(delta.new_token_ids)
                if delta.new_logprobs:
                    logprobs[delta.request_id].extend(delta.new_logprobs)
                if delta.finished:
                    finished[delta.request_id] = delta

        results = []
        for samples in submitted:
            outputs = []
            for request_id, prompt_ids, params in samples:
                delta = finished[request_id]
                ids = token_ids[request_id]
                outputs.append(RequestOutput(
                    request_id=request_id, prompt_token_ids=prompt_ids, token_ids=ids,
                    text=self._text(ids, params, delta.matched_stop),
                    finish_reason=delta.finish_reason, matched_stop=delta.matched_stop,
                    num_cached_tokens=delta.cached_tokens,
                    logprobs=logprobs[request_id] if params.logprobs else None))
            first = outputs[0]
            if len(outputs) > 1:
                first.samples = outputs
            results.append(first)
        return results
