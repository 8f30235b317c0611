"""Sliding window and sinks in the reference attention, each against a naive per-query formula."""
import math

import torch

from oss_serve.kernels.reference import reference_attention


def naive(q, k, v, sinks, scale, window):
    T, Hq, D = q.shape
    group = Hq // k.shape[1]
    out = torch.zeros(T, Hq, D, dtype=torch.float64)
    for t in range(T):
        for h in range(Hq):
            kv = h // group
            keys = [j for j in range(t + 1) if window is None or j > t - window]
            logits = [float(q[t, h].double() @ k[j, kv].double()) * scale for j in keys]
            denom = sum(math.exp(x) for x in logits) + math.exp(float(sinks[h]))
            for j, x in zip(keys, logits):
                out[t, h] += math.exp(x) / denom * v[j, kv].double()
    return out


def test_window_counts_the_current_token_and_sink_only_joins_denominator():
    torch.manual_seed(0)
    T, Hq, Hkv, D = 11, 4, 2, 8
    q, k, v = torch.randn(T, Hq, D), torch.randn(T, Hkv, D), torch.randn(T, Hkv, D)
    sinks = torch.randn(Hq)
    pos = torch.arange(T)
    for window in (None, 4, 1):
        got = reference_attention(q, k, v, sinks, 0.3, pos, pos, window)
        torch.testing.assert_close(got.double(), naive(q, k, v, sinks, 0.3, window), atol=1e-5, rtol=1e-5)


def test_window_of_one_sees_only_itself_scaled_down_by_the_sink():
    q, k, v = torch.randn(3, 1, 4), torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    sinks = torch.tensor([0.7])
    pos = torch.arange(3)
    got = reference_attention(q, k, v, sinks, 1.0, pos, pos, 1)
    for t in range(3):
        logit = float(q[t, 0] @ k[t, 0])
        weight = math.exp(logit) / (math.exp(logit) + math.exp(0.7))
        torch.testing.assert_close(got[t, 0], weight * v[t, 0], atol=1e-5, rtol=1e-5)


def test_very_negative_sink_is_plain_softmax():
    torch.manual_seed(1)
    q, k, v = torch.randn(5, 2, 4), torch.randn(5, 1, 4), torch.randn(5, 1, 4)
    pos = torch.arange(5)
    got = reference_attention(q, k, v, torch.full((2,), -1e4), 0.5, pos, pos, None)
    scores = torch.einsum("qhd,kd->hqk", q, k[:, 0]) * 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
    want = torch.einsum("hqk,kd->qhd", torch.softmax(scores, -1), v[:, 0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
