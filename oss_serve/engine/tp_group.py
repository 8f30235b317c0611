"""A process's membership of the tensor-parallel group: the sum of partial outputs and rank 0's draws
(NCCL on GPU, gloo on CPU), and the channel over which rank 0 sends every step to the workers.

The control channel is a gloo group with no practical timeout: an idle server leaves workers
waiting for the next step for as long as it likes. A rank that dies closes its connections, and
gloo then raises at once in the ranks waiting on it.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from oss_serve.engine.tp_topology import Topology

logger = logging.getLogger(__name__)

IDLE_TIMEOUT = datetime.timedelta(days=365)
# How long a rank waits for the others to reach the rendezvous (loading can be slow on other nodes).
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=30)
_JOIN_POLL_S = 0.2


class TensorParallelGroup:
    def __init__(self, topology: Topology, rank: int, control: Any) -> None:
        self.topology = topology
        self.rank = rank
        self.world_size = topology.world_size
        self._control = control

    @classmethod
    def join(cls, topology: Topology, rank: int, failure: Callable[[], str | None] = lambda: None
             ) -> TensorParallelGroup:
        """Meet the other ranks at rank 0's store. Rank 0 first waits until every worker has reached the
        store, calling `failure()` meanwhile, so that a worker that dies while starting is an error
        here and not a hang inside init_process_group."""
        store = dist.TCPStore(topology.init_host, topology.init_port, topology.world_size, is_master=rank == 0,
                              timeout=RENDEZVOUS_TIMEOUT, wait_for_workers=False)
        if rank == 0:
            waiting = [f"arrived/{r}" for r in range(1, topology.world_size)]
            last_log = time.monotonic()
            while not store.check(waiting):
                problem = failure()
                if problem is not None:
                    raise RuntimeError(problem)
                if time.monotonic() - last_log > 30:
                    logger.info("waiting for tensor-parallel ranks to reach %s:%d", topology.init_host,
                                topology.init_port)
                    last_log = time.monotonic()
                time.sleep(_JOIN_POLL_S)
        else:
            store.set(f"arrived/{rank}", "1")
        if topology.backend == "nccl":
            torch.cuda.set_device(topology.device_of(rank))
            dist.init_process_group("nccl", store=store, rank=rank, world_size=topology.world_size)
            control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=topology.world_size,
                                    timeout=IDLE_TIMEOUT)
            control = dist.group.WORLD
        logger.info("tensor-parallel rank %d of %d joined (%s)", rank, topology.world_size, topology.backend)
        return cls(topology, rank, control)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` into every rank's (same shape and dtype); on GPU queued on the device, no host wait."""
        dist.broadcast(tensor, src=0)
        return tensor

    def send(self, message: Any) -> None:
        """Rank 0: give every worker `message` (pickled)."""
        dist.broadcast_object_list([message], src=0, group=self._control)

    def receive(self) -> Any:
        """A worker: wait for rank 0's next message."""
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
