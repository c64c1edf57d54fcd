"""Process groups for data-parallel training, and launching them through torchrun.

`--gpus N` runs N processes with NCCL (one GPU each); `--nproc N` runs N CPU processes with
gloo, so the multi-process path is exercised in CI without a GPU. The launcher is PyTorch's
own elastic runner (`torch.distributed.run`, through `torchrun.py`, which keeps a worker's exit
status), which sets RANK, WORLD_SIZE and
LOCAL_RANK for each worker: `--standalone` on one machine, or, across `--nnodes` machines, the
c10d rendezvous at `--rdzv-endpoint` (hosted by the torchrun of node rank 0). c10d numbers
the global ranks itself; global rank 0 is the one that writes the run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a no-op copy with one process)."""
        if not self.enabled:
            return values
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def context_from_env(device: str) -> DistContext:
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank)


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Rendezvous:
    """Where the torchruns of a multi-node run meet (the same on every node but node_rank)."""

    nnodes: int
    node_rank: int
    endpoint: str  # HOST:PORT of node rank 0's rendezvous store
    run_id: str  # tells this run's rendezvous apart from another one on the same endpoint


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets), checked; a `UserError` otherwise."""
    from resnext_compiler.errors import UserError

    host, _, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--rdzv-endpoint must be HOST:PORT (e.g. node0.cluster:29400); got "
                        f"{endpoint!r}")
    return host, int(port)


def launch(config_path: Path, nproc: int, args: list[str],
           rendezvous: Rendezvous | None = None) -> subprocess.Popen:
    """Start torchrun with `nproc` training workers on this node (the caller waits for it)."""
    if rendezvous is None:
        where = ["--standalone"]
    else:
        is_host = int(rendezvous.node_rank == 0)
        where = [f"--nnodes={rendezvous.nnodes}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={rendezvous.run_id}",
                 f"--rdzv-conf=is_host={is_host}", "--max-restarts=0"]
    command = [sys.executable, "-m", "resnext_compiler.runtimes.train.torchrun", *where,
               f"--nproc-per-node={nproc}", "--module",
               "resnext_compiler.runtimes.train.worker", str(config_path), *args]
    env = dict(os.environ)
    # torchrun would otherwise print a warning and set 1; split the cores explicitly instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.Popen(command, env=env)
