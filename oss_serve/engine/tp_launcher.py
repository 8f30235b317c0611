"""Starting tensor-parallel ranks: rank 0's side inside the engine (`TensorParallelLeader`) and the
worker-only nodes of a multi-node run (`run_worker_node`).

Workers are fresh interpreters (`python -m oss_serve.engine.tp_worker`), as the engine process
is, handed their arguments pickled on stdin: no fork of a threaded process, no re-import of the
caller's `__main__`.
"""
from __future__ import annotations

import atexit
import logging
import pickle
import subprocess
import sys

import torch

from oss_serve.engine.messages import RunnerLayout, Stop
from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.engine.tp_group import TensorParallelGroup
from oss_serve.engine.tp_runner import TensorParallelRunner
from oss_serve.engine.tp_topology import Topology
from oss_serve.model.config import ModelConfig
from oss_serve.model.parallel import TensorParallelShard, attach_all_reduces
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)
_WORKER_EXIT_WAIT_S = 10


def spawn_workers(args: ServerArgs, topology: Topology, ranks: range | list[int]) -> dict[int, subprocess.Popen]:
    workers = {}
    for rank in ranks:
        process = subprocess.Popen([sys.executable, "-m", "oss_serve.engine.tp_worker"], stdin=subprocess.PIPE)
        process.stdin.write(pickle.dumps((args, topology, rank)))
        process.stdin.close()
        workers[rank] = process
    return workers


def dead_worker(workers: dict[int, subprocess.Popen]) -> str | None:
    for rank, process in workers.items():
        if process.poll() is not None:
            return f"tensor-parallel rank {rank} exited (exit code {process.returncode})"
    return None


def stop_workers(workers: dict[int, subprocess.Popen]) -> None:
    for process in workers.values():
        try:
            process.wait(_WORKER_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class TensorParallelLeader:
    """Rank 0: starts this node's worker ranks, joins the group, loads rank 0's shard of the model, and
    sends the runner's layout and then every step to the workers. `loaded` is rank 0's LoadedModel."""

    def __init__(self, args: ServerArgs) -> None:
        from oss_serve.model.loader import load_model, resolve_model_path

        self.topology = Topology.from_args(args)
        if self.topology.node_rank != 0:
            raise ValueError("the engine runs on node 0; start other nodes with --node-rank N (they only host workers)")
        shard = TensorParallelShard(0, self.topology.world_size)
        # Fail before starting anything when the model cannot be split this way.
        shard.check(ModelConfig.from_folder(resolve_model_path(args.model_path, args.revision)))
        self.workers = spawn_workers(args, self.topology, list(self.topology.node_ranks)[1:])
        self._closed = False
        atexit.register(self.shutdown)
        try:
            self.group = TensorParallelGroup.join(self.topology, 0, self.failure)
            self.loaded = load_model(args.model_path, dtype=args.dtype, device=self.topology.device_of(0),
                                     load_format=args.load_format, revision=args.revision, seed=args.random_seed,
                                     moe_backend=args.moe_backend, shard=shard)
            attach_all_reduces(self.loaded.model, self.group.all_reduce)
        except BaseException:
            self._closed = True
            for process in self.workers.values():
                process.kill()
            stop_workers(self.workers)
            raise

    def failure(self) -> str | None:
        """Why the group is broken, if one of this node's workers has exited."""
        return dead_worker(self.workers)

    def send(self, message: object) -> None:
        problem = self.failure()
        if problem is not None:
            raise RuntimeError(problem)
        self.group.send(message)

    def make_runner(self, layout: RunnerLayout, model: torch.nn.Module, cache: PagedKVCache, device: torch.device,
                    attention_backend: str) -> TensorParallelRunner:
        """Rank 0's runner; the workers build theirs from `layout`."""
        self.send(layout)
        return TensorParallelRunner(model, cache, device, attention_backend, layout.num_table_rows,
                                    layout.max_pages_per_seq, self)

    def shutdown(self) -> None:
        """Stop the workers (on every node) and leave the group. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.failure() is None:
            try:
                self.group.send(Stop())
            except RuntimeError:
                logger.warning("a tensor-parallel worker was already gone at shutdown")
        stop_workers(self.workers)
        self.group.close()


def run_worker_node(args: ServerArgs) -> int:
    """`launch_server --node-rank N` (N > 0): host this node's worker ranks until rank 0 stops them."""
    from oss_serve.model.loader import resolve_model_path

    topology = Topology.from_args(args)
    resolve_model_path(args.model_path, args.revision)  # download once, before this node's ranks all look for it
    logger.info("node %d of %d: starting tensor-parallel ranks %s, rank 0 at %s:%d", topology.node_rank,
                topology.nnodes, list(topology.node_ranks), topology.init_host, topology.init_port)
    workers = spawn_workers(args, topology, topology.node_ranks)
    try:
        codes = [process.wait() for process in workers.values()]
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.terminate()
        stop_workers(workers)
    return max(codes, key=abs) if codes else 0
