"""A worker rank (1..N-1): loads its shard of the model, then runs every step plan rank 0 sends it.

Entry point: `python -m oss_serve.engine.tp_worker`, with pickled (ServerArgs, Topology, rank) on
stdin. It exits when rank 0 says Stop, or with an error when rank 0 goes away (gloo notices the
closed connection at once).
"""
from __future__ import annotations

import logging
import os
import pickle
import sys

import torch

from oss_serve.engine.messages import CaptureGraphs, RunnerLayout, Stop
from oss_serve.engine.model_runner import ModelRunner, StepPlan
from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.engine.tp_group import TensorParallelGroup
from oss_serve.engine.tp_topology import Topology
from oss_serve.model.loader import load_model
from oss_serve.model.parallel import TensorParallelShard, attach_all_reduces
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)


def run_worker(args: ServerArgs, topology: Topology, rank: int) -> None:
    if topology.device_type == "cpu":
        # The ranks of a node share its cores; without this each would start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // topology.ranks_per_node))
    group = TensorParallelGroup.join(topology, rank)
    try:
        loaded = load_model(args.model_path, dtype=args.dtype, device=topology.device_of(rank),
                            load_format=args.load_format, revision=args.revision, seed=args.random_seed,
                            moe_backend=args.moe_backend, shard=TensorParallelShard(rank, topology.world_size))
        model, config, device = loaded.model, loaded.config, loaded.device
        attach_all_reduces(model, group.all_reduce)
        runner: ModelRunner | None = None
        while True:
            message = group.receive()
            if isinstance(message, Stop):
                return
            if isinstance(message, StepPlan):
                drawn = None
                if message.pending is not None:
                    drawn = group.broadcast(torch.empty(message.pending.num_drawn, dtype=torch.long, device=device))
                runner.execute(message, drawn)
            elif isinstance(message, RunnerLayout):
                cache = PagedKVCache(message.layer_windows, message.num_full_pages, message.num_sliding_pages,
                                     message.page_size, config.num_kv_heads, config.head_dim, message.dtype, device)
                runner = ModelRunner(model, cache, device, args.attention_backend, message.num_table_rows,
                                     message.max_pages_per_seq, returns_logits=False)
            elif isinstance(message, CaptureGraphs):
                runner.enable_cuda_graphs(message.max_batch_size)
            else:
                raise TypeError(f"unexpected message from rank 0: {message!r}")
    finally:
        group.close()


def main() -> None:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where the worker is
    args, topology, rank = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format=f"%(asctime)s tp{rank} %(levelname)s %(message)s")
    run_worker(args, topology, rank)


if __name__ == "__main__":
    main()
