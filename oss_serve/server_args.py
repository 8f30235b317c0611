"""ServerArgs: the one configuration object, made of the model, engine, HTTP and tool groups. The CLI of
every entry point is generated from it.

Flag names follow SGLang's so that existing launch commands work unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self


def arg(default: Any, help: str, *, flags: tuple[str, ...] = (), choices: tuple[str, ...] | None = None) -> Any:
    """A configuration field; `flags` adds aliases to the generated `--field-name`."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


class CliGenerated:
    """A dataclass whose fields are command-line flags: `--field-name` (and `--field_name`, as SGLang
    accepts) plus the aliases in the field's `flags`."""

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if only is not None and f.name not in only:
                continue
            names = (f"--{f.name.replace('_', '-')}", *f.metadata["flags"])
            if f.name != f.name.replace("_", "-"):
                names = (*names, f"--{f.name}")  # SGLang also accepts the underscore spelling
            kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"], "default": f.default}
            base = _base_type(hints[f.name])
            if base is bool:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = base
                if f.metadata["choices"]:
                    kwargs["choices"] = f.metadata["choices"]
            parser.add_argument(*names, **kwargs)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


@dataclass
class ModelArgs(CliGenerated):
    model_path: str = arg("", "Local folder or Hugging Face hub id of a gpt-oss checkpoint.", flags=("--model",))
    tokenizer_path: str | None = arg(None, "Tokenizer folder or hub id (default: the model's).",
                                     flags=("--tokenizer",))
    revision: str | None = arg(None, "Hub revision to download.")
    load_format: str = arg("auto", "'dummy' builds random weights from config.json alone.",
                           choices=("auto", "safetensors", "dummy"))
    dtype: str = arg("auto", "Activation and non-expert weight dtype.", choices=("auto", "bfloat16", "float32"))
    device: str = arg("auto", "Where to run the model.", choices=("auto", "cpu", "cuda"))
    context_length: int | None = arg(None, "Longest prompt plus output, in tokens (default: the model's).")
    served_model_name: str | None = arg(None, "Model name reported by the API (default: the model path).")
    random_seed: int = arg(0, "Seed for dummy weights and for sampling without a request seed.")


@dataclass
class EngineArgs(CliGenerated):
    tp_size: int = arg(1, "Tensor-parallel ranks.", flags=("--tp", "--tensor-parallel-size"))
    max_running_requests: int | None = arg(None, "Most requests decoding at once.")
    max_total_tokens: int | None = arg(None, "KV pool size in tokens (default: from memory).")
    mem_fraction_static: float | None = arg(None, "Fraction of GPU memory for weights plus KV cache "
                                                  "(CPU: of free RAM for KV).")
    kv_cache_dtype: str = arg("auto", "KV cache storage dtype; attention math stays in the model dtype.",
                              choices=("auto", "bf16", "bfloat16", "fp8_e4m3", "fp8_e5m2"))
    page_size: int = arg(16, "Tokens per KV cache page.")
    chunked_prefill_size: int = arg(8192, "Longest prefill chunk in tokens; longer prompts are split.")
    max_prefill_tokens: int = arg(16384, "Token budget of one scheduler step (prefill plus decode).")
    disable_radix_cache: bool = arg(False, "Turn off the shared prefix cache.")
    stream_interval: int = arg(1, "Stream every N generated tokens.")
    cuda_graph_max_bs: int | None = arg(None, "Largest decode batch captured in a CUDA graph.")
    disable_cuda_graph: bool = arg(False, "Run decode steps eagerly.")
    disable_overlap_schedule: bool = arg(False, "On a GPU, schedule each step only after the previous one ended "
                                                "(by default the next step is prepared while the GPU runs one).")
    attention_backend: str = arg("auto", "Attention kernels.", choices=("auto", "torch", "triton"))
    moe_backend: str = arg("auto", "Mixture-of-experts kernels.", choices=("auto", "torch", "triton"))
    max_queued_requests: int | None = arg(None, "Requests waiting beyond this get HTTP 503 with Retry-After.")
    nnodes: int = arg(1, "Nodes the --tp ranks are spread over (--tp / --nnodes GPUs each).")
    node_rank: int = arg(0, "This node's rank: 0 runs the server and rank 0; others only host worker ranks.")
    dist_init_addr: str | None = arg(None, "host:port of node 0's rendezvous, the same on every node "
                                           "(needed for --nnodes > 1).")


@dataclass
class HttpArgs(CliGenerated):
    host: str = arg("127.0.0.1", "Address to listen on.")
    port: int = arg(30000, "Port to listen on.")
    api_key: str | None = arg(None, "Require 'Authorization: Bearer KEY' on every route except /health.")
    enable_metrics: bool = arg(False, "Serve Prometheus metrics at /metrics.")
    log_level: str = arg("info", "Logging level.", choices=("debug", "info", "warning", "error"))
    log_requests: bool = arg(False, "Also log each request body and each non-streamed response body (at DEBUG; "
                                    "every request's access line is logged anyway).")
    max_request_bytes: int = arg(32 * 1024 * 1024, "Largest request body; larger ones get HTTP 413.")
    reasoning_parser: str | None = arg(None, "Accepted for SGLang compatibility; gpt-oss always parses harmony.",
                                       choices=("gpt-oss",))
    tool_call_parser: str | None = arg(None, "Accepted for SGLang compatibility; gpt-oss always parses harmony.",
                                       choices=("gpt-oss",))
    response_store: str = arg("~/.cache/oss_serve/responses.sqlite3",
                              "SQLite file of stored /v1/responses (':memory:' keeps them only while running).")
    response_store_ttl: float | None = arg(None, "Seconds a stored response is kept (default: no limit).")
    response_store_max: int | None = arg(10000, "Most stored responses; the oldest go first.")


@dataclass
class ToolArgs(CliGenerated):
    tool_server: str | None = arg(None, "'demo' for built-in python and browser tools and/or comma-separated MCP "
                                        "servers (host:port or URL); started at launch.")
    python_backend: str | None = arg(None, "Python tool backend (default: PYTHON_EXECUTION_BACKEND, else docker, "
                                           "else sandbox).", choices=("docker", "uv", "dangerously_use_uv", "sandbox"))
    tool_timeout: float = arg(120.0, "Seconds one tool call may run.")
    python_stateful: bool = arg(False, "Keep one python interpreter per response (notebook style) instead of a "
                                       "fresh one per call.")
    python_docker_image: str | None = arg(None, "Image for the docker python backend (default: PYTHON_DOCKER_IMAGE, "
                                                "else python:3.11).")
    browser_backend: str | None = arg(None, "Web search provider (default: BROWSER_BACKEND, else whichever of "
                                            "EXA_API_KEY / YDC_API_KEY is set).", choices=("exa", "you"))
    browser_allow_private: bool = arg(False, "Let browser.open fetch loopback, link-local and private addresses.")


# Dataclass inheritance lays the four groups' fields side by side, so that `args.tp_size` reads as before and
# each layer can be typed with only the group it uses (the tool factory takes ToolArgs).
@dataclass
class ServerArgs(ToolArgs, HttpArgs, EngineArgs, ModelArgs):
    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_path

    def validate(self) -> None:
        """Raise ValueError naming the offending flag."""
        if not self.model_path:
            raise ValueError("--model-path is required")
        checks = [
            (self.tp_size >= 1, "--tp must be at least 1"),
            (self.nnodes >= 1 and self.tp_size % self.nnodes == 0, "--nnodes must divide --tp"),
            (0 <= self.node_rank < self.nnodes, "--node-rank must be in 0..nnodes-1"),
            (self.nnodes == 1 or bool(self.dist_init_addr), "--nnodes > 1 needs --dist-init-addr HOST:PORT of node 0"),
            (self.page_size >= 1, "--page-size must be at least 1"),
            (self.chunked_prefill_size >= 1, "--chunked-prefill-size must be at least 1"),
            (self.stream_interval >= 1, "--stream-interval must be at least 1"),
            (self.mem_fraction_static is None or 0 < self.mem_fraction_static <= 1,
             "--mem-fraction-static must be in (0, 1]"),
            (self.max_running_requests is None or self.max_running_requests >= 1,
             "--max-running-requests must be at least 1"),
            (self.context_length is None or self.context_length >= 1, "--context-length must be at least 1"),
            (self.max_queued_requests is None or self.max_queued_requests >= 0,
             "--max-queued-requests must be at least 0"),
            (self.max_request_bytes >= 1, "--max-request-bytes must be at least 1"),
            (0 < self.port < 65536, "--port must be in 1..65535"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _base_type(hint: Any) -> type:
    """`int | None` -> int; `Literal[...]` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return str
    return hint
