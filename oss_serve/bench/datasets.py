"""Benchmark request sets: prompts with their token lengths and the output length to ask for."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oss_serve.bench.tokenizer import BenchTokenizer

DATASET_NAMES = ("random", "random-ids", "sharegpt", "generated-shared-prefix")


@dataclass
class BenchRequest:
    # Text for every backend, or token ids (random-ids) for backends that accept them.
    prompt: str | list[int]
    prompt_len: int
    output_len: int


def sample_lengths(rng: np.random.Generator, length: int, range_ratio: float, count: int) -> list[int]:
    """Uniform integers in [max(length * range_ratio, 1), length], both ends included."""
    low = max(int(length * range_ratio), 1)
    high = max(length, low)
    return [int(n) for n in rng.integers(low, high + 1, size=count)]


class RandomTextMaker:
    """Random prompts whose length in tokens is exact.

    The prompt is a run of vocabulary entries that are a space plus lowercase letters: every
    BPE pre-tokenizer in use splits such text at the spaces, so n words encode to exactly n
    tokens. The result is re-encoded anyway and trimmed or padded if a tokenizer disagrees.
    """

    _WORD = re.compile(r" [a-z]{3,}")

    def __init__(self, tokenizer: BenchTokenizer, rng: np.random.Generator) -> None:
        self.tokenizer = tokenizer
        self.rng = rng
        self.word_ids = self._find_single_token_words()

    def _find_single_token_words(self) -> np.ndarray:
        word_ids = []
        for token_id in self.tokenizer.ordinary_token_ids():
            try:
                text = self.tokenizer.decode([token_id])
            except Exception:  # ids that are only part of a UTF-8 sequence
                continue
            # Only words that come back as the same single token (vocabularies can hold duplicates).
            if self._WORD.fullmatch(text) and self.tokenizer.encode(text) == [token_id]:
                word_ids.append(token_id)
        return np.asarray(word_ids, dtype=np.int64)

    def random_ids(self, count: int) -> list[int]:
        pool = self.word_ids if len(self.word_ids) else np.asarray(self.tokenizer.ordinary_token_ids(), dtype=np.int64)
        return [int(i) for i in self.rng.choice(pool, size=count)]

    def make(self, num_tokens: int) -> tuple[str, int]:
        """A prompt of `num_tokens` tokens; returns the text and its measured length."""
        text = self.tokenizer.decode(self.random_ids(num_tokens))
        for _ in range(16):
            token_ids = self.tokenizer.encode(text)
            if len(token_ids) == num_tokens:
                return text, num_tokens
            if len(token_ids) > num_tokens:
                text = self.tokenizer.decode(token_ids[:num_tokens])
            else:
                text = text + self.tokenizer.decode(self.random_ids(num_tokens - len(token_ids)))
        return text, len(self.tokenizer.encode(text))


def random_dataset(tokenizer: BenchTokenizer, num_prompts: int, input_len: int, output_len: int,
                   range_ratio: float, seed: int) -> list[BenchRequest]:
    rng = np.random.default_rng(seed)
    input_lens = sample_lengths(rng, input_len, range_ratio, num_prompts)
    output_lens = sample_lengths(rng, output_len, range_ratio, num_prompts)
    maker = RandomTextMaker(tokenizer, rng)
    return [BenchRequest(*maker.make(prompt_len), out_len) for prompt_len, out_len in zip(input_lens, output_lens)]


def random_ids_dataset(tokenizer: BenchTokenizer, num_prompts: int, input_len: int, output_len: int,
                       range_ratio: float, seed: int) -> list[BenchRequest]:
    """Uniformly random ordinary token ids, sent as ids where the backend accepts them."""
    rng = np.random.default_rng(seed)
    input_lens = sample_lengths(rng, input_len, range_ratio, num_prompts)
    output_lens = sample_lengths(rng, output_len, range_ratio, num_prompts)
    pool = np.asarray(tokenizer.ordinary_token_ids(), dtype=np.int64)
    return [BenchRequest([int(i) for i in rng.choice(pool, size=n)], n, out_len)
            for n, out_len in zip(input_lens, output_lens)]


def _sharegpt_turns(entry: dict) -> list[str]:
    turns = entry.get("conversations") or entry.get("conversation") or []
    return [str(turn.get("value", turn.get("content", ""))) for turn in turns]


def sharegpt_dataset(tokenizer: BenchTokenizer, dataset_path: str, num_prompts: int, seed: int,
                     fixed_output_len: int | None = None, context_len: int | None = None) -> list[BenchRequest]:
    """The first human turn as prompt; the first reply's token count as output length.

    Without a context length, pairs with prompts over 1024 or prompt+reply over 2048 tokens are
    dropped, and so are pairs with fewer than 4 tokens on either side: the usual ShareGPT filter.
    """
    path = Path(dataset_path)
    if not path.is_file():
        raise FileNotFoundError(f"ShareGPT file not found: {dataset_path} (pass --dataset-path)")
    entries = json.loads(path.read_text())
    pairs = [turns[:2] for turns in map(_sharegpt_turns, entries) if len(turns) >= 2]
    order = np.random.default_rng(seed).permutation(len(pairs))
    requests: list[BenchRequest] = []
    for index in order:
        if len(requests) == num_prompts:
            break
        prompt, reply = pairs[index]
        prompt_len = len(tokenizer.encode(prompt))
        out_len = fixed_output_len if fixed_output_len is not None else len(tokenizer.encode(reply))
        if fixed_output_len is None and (prompt_len < 4 or out_len < 4):
            continue
        if context_len is None:
            if prompt_len > 1024 or prompt_len + out_len > 2048:
                continue
        elif prompt_len + out_len > context_len:
            continue
        requests.append(BenchRequest(prompt, prompt_len, out_len))
    if len(requests) < num_prompts:
        raise ValueError(f"{dataset_path} yields only {len(requests)} usable conversations, {num_prompts} asked for")
    return requests


def generated_shared_prefix_dataset(tokenizer: BenchTokenizer, num_groups: int, prompts_per_group: int,
                                    system_prompt_len: int, question_len: int, output_len: int,
                                    seed: int) -> list[BenchRequest]:
    """Groups of prompts that share one long random system prompt, to exercise the prefix cache.

    Requests from all groups are shuffled together, so a cache must hold several prefixes at once.
    """
    rng = np.random.default_rng(seed)
    maker = RandomTextMaker(tokenizer, rng)
    requests = []
    for _ in range(num_groups):
        system_prompt, _ = maker.make(system_prompt_len)
        for _ in range(prompts_per_group):
            question, _ = maker.make(question_len)
            prompt = system_prompt + "\n\n" + question
            requests.append(BenchRequest(prompt, len(tokenizer.encode(prompt)), output_len))
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]
