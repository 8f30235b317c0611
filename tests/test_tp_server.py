"""`python -m oss_serve.launch_server --tp 2` on CPU: the same greedy outputs as --tp 1 (offline),
and a clean shutdown that takes the worker rank with it."""
from __future__ import annotations

from pathlib import Path

import httpx
from server_process import ServerProcess

from oss_serve import LLM, SamplingParams

PROMPTS = [[11, 2, 33, 4, 55, 6, 77, 8, 99, 10], [100, 200, 300], [5] * 21]
MAX_NEW_TOKENS = 12


def test_server_tp2_matches_tp1(tiny_ckpt: Path) -> None:
    # float32: see tests/test_tp_offline.py for why bf16 TP=2 may differ from TP=1 by rounding.
    llm = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_total_tokens=2048)
    expected = [o.token_ids for o in llm.generate(
        PROMPTS, SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0, ignore_eos=True))]

    server = ServerProcess(tiny_ckpt, ["--tp", "2", "--device", "cpu", "--dtype", "float32",
                                       "--max-total-tokens", "2048", "--context-length", "512"])
    try:
        got = []
        for prompt in PROMPTS:
            response = httpx.post(server.base_url + "/generate", timeout=120, json={
                "input_ids": prompt,
                "sampling_params": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "ignore_eos": True}})
            assert response.status_code == 200, response.text
            got.append(response.json()["output_ids"])
        assert got == expected
        assert "tensor-parallel rank 1 of 2 joined" in server.log_tail(100_000)
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log_tail()
