"""bench_serving's command line: the flags people already type, without a server."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from server_process import free_port

from oss_serve.bench.backends import get_backend
from oss_serve.bench.datasets import BenchRequest
from oss_serve.bench.serving import adapt_prompts, build_arg_parser, build_requests, main, resolve_base_url
from oss_serve.bench.tokenizer import HFTokenizer, load_tokenizer

SEED_RECIPE = ("--model openai/gpt-oss-120b --backend sglang-oai --dataset-name random --max-concurrency 1024 "
               "--num-prompts 5120 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 1")


def test_seed_recipe_parses_and_builds_exact_prompts(harmony_encoding) -> None:
    args = build_arg_parser().parse_args(SEED_RECIPE.split())
    assert (args.backend, args.max_concurrency, args.num_prompts) == ("sglang-oai", 1024, 5120)
    assert math.isinf(args.request_rate) and resolve_base_url(args) == "http://127.0.0.1:30000"
    args.num_prompts = 6  # the recipe's shape, fewer prompts
    tokenizer = load_tokenizer(args.model)  # offline: harmony's o200k_harmony, the same ids
    requests = build_requests(args, tokenizer)
    assert [(r.prompt_len, r.output_len) for r in requests] == [(1024, 1024)] * 6
    assert all(len(tokenizer.encode(r.prompt)) == 1024 for r in requests)


def test_base_url_flags() -> None:
    parser = build_arg_parser()
    assert resolve_base_url(parser.parse_args(["--host", "10.0.0.2", "--port", "8000"])) == "http://10.0.0.2:8000"
    assert resolve_base_url(parser.parse_args(["--base-url", "http://h:1/", "--port", "9"])) == "http://h:1"


def test_token_id_prompts_become_text_for_text_only_endpoints(tokenizer_json_path: Path) -> None:
    tokenizer = HFTokenizer(tokenizer_json_path)
    ids = tokenizer.encode(" hello world")
    requests = [BenchRequest(ids, len(ids), 4)]
    assert adapt_prompts(requests, get_backend("oss-serve"), tokenizer) == requests
    assert adapt_prompts(requests, get_backend("openai"), tokenizer) == requests
    [chat] = adapt_prompts(requests, get_backend("openai-chat"), tokenizer)
    assert chat.prompt == " hello world" and chat.prompt_len == len(ids)


def test_sharegpt_needs_a_path(tokenizer_json_path: Path) -> None:
    args = build_arg_parser().parse_args(["--dataset-name", "sharegpt"])
    with pytest.raises(SystemExit, match="--dataset-path"):
        build_requests(args, HFTokenizer(tokenizer_json_path))


def test_unreachable_server_fails_clearly(tokenizer_json_path: Path) -> None:
    with pytest.raises(RuntimeError, match="warmup failed, is the server up"):
        main(["--base-url", f"http://127.0.0.1:{free_port()}", "--model", "m",
              "--tokenizer", str(tokenizer_json_path), "--num-prompts", "1", "--random-input-len", "4",
              "--random-output-len", "2", "--disable-tqdm"])
