"""launch_server's command line: the seed recipe's flags parse, unknown flags are errors."""
from __future__ import annotations

import pytest

from oss_serve.launch_server import parse_server_args

SEED_RECIPE = ["--model", "openai/gpt-oss-20b", "--tp", "1", "--kv-cache-dtype", "fp8_e4m3", "--disable-radix-cache",
               "--mem-fraction-static", "0.95", "--stream-interval", "20", "--max-running-requests", "1024",
               "--cuda-graph-max-bs", "1024", "--context-length", "8192", "--host", "0.0.0.0", "--port", "8000",
               "--tool-server", "demo", "--reasoning-parser", "gpt-oss", "--tool-call-parser", "gpt-oss",
               "--api-key", "k", "--enable-metrics", "--served-model-name", "gpt-oss", "--log-level", "warning"]


def test_seed_recipe_flags_parse() -> None:
    args = parse_server_args(SEED_RECIPE)
    assert (args.model_path, args.tp_size, args.kv_cache_dtype, args.disable_radix_cache) == (
        "openai/gpt-oss-20b", 1, "fp8_e4m3", True)
    assert (args.port, args.host, args.api_key, args.enable_metrics, args.model_name) == (
        8000, "0.0.0.0", "k", True, "gpt-oss")
    assert parse_server_args(["--model-path", "m", "--tensor-parallel-size", "2"]).tp_size == 2


def test_defaults() -> None:
    args = parse_server_args(["--model-path", "m"])
    assert (args.host, args.port) == ("127.0.0.1", 30000)


@pytest.mark.parametrize("argv", [["--model-path", "m", "--no-such-flag"], ["--model-path", "m", "--po", "1"],
                                  [], ["--model-path", "m", "--port", "0"]])
def test_bad_command_lines_exit_with_an_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_server_args(argv)
    assert raised.value.code == 2
