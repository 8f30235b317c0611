"""The simplest way to run the model: every sequence's keys and values in one tensor per layer, decoded one
token at a time. The reference the engine and transformers are compared with in the tests."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from oss_serve.kernels.reference import apply_rotary, reference_attention
from oss_serve.model.attention import AttentionBackend
from oss_serve.model.gpt_oss import GptOssForCausalLM


class ContiguousKVBackend(AttentionBackend):
    """Keeps each sequence's keys and values in one tensor per layer, appended every step."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self._keys: dict[int, list[torch.Tensor | None]] = {}
        self._values: dict[int, list[torch.Tensor | None]] = {}
        self._lengths: dict[int, int] = {}
        self._batch: list[tuple[int, int]] = []  # (sequence id, new tokens) in packed order

    def prepare(self, batch: list[tuple[int, int]]) -> torch.Tensor:
        """Declare the next forward's packed layout; returns the positions of its tokens."""
        self._batch = batch
        positions = []
        for seq_id, num_new in batch:
            start = self._lengths.setdefault(seq_id, 0)
            self._keys.setdefault(seq_id, [None] * self.num_layers)
            self._values.setdefault(seq_id, [None] * self.num_layers)
            positions.append(torch.arange(start, start + num_new))
        return torch.cat(positions)

    def finish_step(self) -> None:
        for seq_id, num_new in self._batch:
            self._lengths[seq_id] += num_new

    def release(self, seq_id: int) -> None:
        for store in (self._keys, self._values, self._lengths):
            store.pop(seq_id, None)

    def forward(self, layer_id, q, k, v, cos, sin, sinks, sliding_window, scale):
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        outputs = []
        offset = 0
        for seq_id, num_new in self._batch:
            seg = slice(offset, offset + num_new)
            offset += num_new
            past_k, past_v = self._keys[seq_id][layer_id], self._values[seq_id][layer_id]
            keys = k[seg] if past_k is None else torch.cat([past_k, k[seg]])
            values = v[seg] if past_v is None else torch.cat([past_v, v[seg]])
            self._keys[seq_id][layer_id], self._values[seq_id][layer_id] = keys, values
            total = keys.shape[0]
            k_pos = torch.arange(total, device=q.device)
            outputs.append(reference_attention(q[seg], keys, values, sinks, scale, k_pos[total - num_new:], k_pos,
                                               sliding_window))
        return torch.cat(outputs)


def generate_ids(model: GptOssForCausalLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 stop_token_ids: Iterable[int] = (), seed: int = 0) -> list[int]:
    """Prefill the prompt, then decode one token at a time; stops after a stop token (kept in the output)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    stops = set(stop_token_ids)
    cache = ContiguousKVBackend(model.config.num_layers)
    step_ids = prompt_ids
    output: list[int] = []
    while len(output) < max_new_tokens:
        positions = cache.prepare([(0, len(step_ids))]).to(device)
        hidden = model(torch.tensor(step_ids, device=device), positions, cache)
        cache.finish_step()
        logits = model.compute_logits(hidden[-1:])[0].cpu()
        if temperature == 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        output.append(token)
        if token in stops:
            break
        step_ids = [token]
    return output
