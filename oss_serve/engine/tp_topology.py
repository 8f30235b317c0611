"""Where each tensor-parallel rank runs, from `--tp`, `--nnodes`, `--node-rank` and `--dist-init-addr`.

Ranks are laid out node by node: node k runs ranks k*R .. k*R+R-1 with R = tp / nnodes, each on
its own GPU (`cuda:<rank on the node>`) or, on CPU, in its own process. Rank 0 (on node 0) hosts the
engine and the rendezvous store at `--dist-init-addr` (default: a free local port).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import torch

from oss_serve.server_args import ServerArgs


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_host_port(address: str) -> tuple[str, int]:
    """'host:port' or '[v6 host]:port'."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--dist-init-addr {address!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Topology:
    world_size: int
    nnodes: int
    node_rank: int
    init_host: str
    init_port: int
    device_type: str  # "cpu" or "cuda"

    @classmethod
    def from_args(cls, args: ServerArgs) -> Topology:
        """Call on each node; without --dist-init-addr (one node only) picks a free local port."""
        if args.tp_size % args.nnodes:
            raise ValueError(f"--nnodes {args.nnodes} must divide --tp {args.tp_size}")
        if args.dist_init_addr:
            host, port = parse_host_port(args.dist_init_addr)
        elif args.nnodes > 1:
            raise ValueError("--nnodes > 1 needs --dist-init-addr HOST:PORT of node 0")
        else:
            host, port = "127.0.0.1", free_local_port()
        device_type = args.device
        if device_type == "auto":
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(args.tp_size, args.nnodes, args.node_rank, host, port, device_type)

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nnodes

    @property
    def node_ranks(self) -> range:
        """The ranks this node runs."""
        return range(self.node_rank * self.ranks_per_node, (self.node_rank + 1) * self.ranks_per_node)

    @property
    def backend(self) -> str:
        return "nccl" if self.device_type == "cuda" else "gloo"

    def device_of(self, rank: int) -> str:
        return f"cuda:{rank % self.ranks_per_node}" if self.device_type == "cuda" else "cpu"
