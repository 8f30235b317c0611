"""How big the paged KV pools are, and the engine limits that follow from them: the one place where the engine
flags left unset (None) get their values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.server_args import ServerArgs

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


@dataclass(frozen=True)
class EngineLimits:
    """The KV pools and the limits that follow: what the scheduler, the cache and the runner are built from."""
    layer_windows: list[int | None]
    kv_dtype: torch.dtype
    page_size: int
    num_full_pages: int
    num_sliding_pages: int
    sliding_window: int | None
    chunk_size: int  # longest prefill chunk that fits the pools
    max_running: int
    context_length: int  # the model's, the flag's and the full pool's, whichever is least
    cuda_graph_max_bs: int

    @property
    def max_pages_per_seq(self) -> int:
        return -(-self.context_length // self.page_size)


def plan_engine_limits(args: ServerArgs, config, model_dtype: torch.dtype, device: torch.device) -> EngineLimits:
    kv_dtype = model_dtype if args.kv_cache_dtype == "auto" else KV_DTYPES[args.kv_cache_dtype]
    layer_windows = [config.window_of(i) for i in range(config.num_layers)]
    context_length = min(args.context_length or config.max_position_embeddings, config.max_position_embeddings)
    num_full_pages, num_sliding_pages = plan_kv_pools(args, layer_windows, config.num_kv_heads, config.head_dim,
                                                      kv_dtype, device, context_length)
    ps = args.page_size
    window = max((w for w in layer_windows if w is not None), default=None)
    chunk = min(args.chunked_prefill_size, args.max_prefill_tokens)
    if num_sliding_pages:
        # A chunk plus the window before it must fit the sliding pool.
        chunk = max(1, min(chunk, (num_sliding_pages - 2) * ps - window))
    chunk = max(1, min(chunk, (num_full_pages - 1) * ps))
    max_running = args.max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS
    return EngineLimits(layer_windows, kv_dtype, ps, num_full_pages, num_sliding_pages, window, chunk, max_running,
                    min(context_length, num_full_pages * ps),  # a sequence must fit the full-attention pool
                    min(args.cuda_graph_max_bs or DEFAULT_CUDA_GRAPH_MAX_BS, max_running))


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
