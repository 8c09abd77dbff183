"""Ranks for ``convkit train``: torch's launcher, the process group, threads per rank.

``convkit train --nproc-per-node N`` hands the command to torch's own launcher
(``torch.distributed.run``, the code behind ``torchrun``) with a standalone rendezvous on this
machine. Each of the N ranks then runs ``python -m convkit train`` with the same arguments and
learns its place from the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``), exactly as under ``torchrun --nproc-per-node N -m convkit train ...``, which
is also how several machines are used (torchrun's ``--nnodes`` and ``--rdzv-*`` options).

The process group uses gloo on the CPU and NCCL on CUDA, with a timeout
(``CONVKIT_DIST_TIMEOUT`` seconds, default 300) on its set-up and on every collective, so a rank
that stops answering ends the run instead of hanging it; a rank that dies is noticed at once by
torch's launcher, which stops the others and reports the first error.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

TIMEOUT_ENV = "CONVKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0  # longer than any gap between collectives here (a checkpoint write)
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its global and local rank and how many there are."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> "Ranks":
        """Read torchrun's variables; a process not started by it is rank 0 of 1."""
        if not launched():
            return cls()
        world = int(os.environ["WORLD_SIZE"])
        return cls(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]),
                   int(os.environ.get("LOCAL_WORLD_SIZE", world)))

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, plots and writes files; the others only compute."""
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torch's launcher (torchrun or ``--nproc-per-node``)."""
    return all(name in os.environ for name in _LAUNCH_ENV)


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(local_world_size: int) -> int:
    """Torch threads per rank when none are asked for: the cores shared out among the ranks."""
    return max(1, cores() // max(1, local_world_size))


def set_threads(threads: Optional[int], ranks: Ranks) -> None:
    """``threads`` when given; else ``OMP_NUM_THREADS`` when set (torch has read it already);
    else, with several ranks on this machine, cores / ranks (one rank keeps torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ and ranks.local_world_size > 1:
        torch.set_num_threads(default_threads(ranks.local_world_size))


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors, NCCL for CUDA tensors."""
    return "nccl" if device.type == "cuda" else "gloo"


def timeout() -> timedelta:
    """Process-group set-up and collective timeout, from ``CONVKIT_DIST_TIMEOUT`` (seconds)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return timedelta(seconds=seconds)


def setup(device: torch.device) -> Ranks:
    """Join the process group when started by torch's launcher (once per process); return the
    ranks. On CUDA each rank takes GPU ``LOCAL_RANK``."""
    ranks = Ranks.from_env()
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend_for(device), timeout=timeout())
    return ranks


def active() -> bool:
    """True when collectives are in use (a process group is set up)."""
    return dist.is_available() and dist.is_initialized()


def reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks (unchanged without a process group); returns a CPU tensor."""
    if not active():
        return values
    on = values.to("cuda") if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(on, op=dist.ReduceOp.SUM)
    return on.cpu()


def gather(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def teardown() -> None:
    """Leave the process group if one was joined."""
    if active():
        dist.destroy_process_group()


def record_error(error: BaseException) -> None:
    """Write ``error`` where torch's launcher looks for a failed rank's error, so the launcher
    can name it in its one-line summary (no-op outside a launched rank)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    now = time.time()
    # torch's own ErrorHandler layout, plus the time to the microsecond: when one rank fails, its
    # peers fail within the same second ("connection closed by peer"), and the first is the cause
    data = {"message": {"message": f"{type(error).__name__}: {error}",
                        "extraInfo": {"py_callstack": traceback.format_exc(),
                                      "timestamp": str(int(now)), "time": now}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:  # the summary loses the message; the rank's own stderr still has it
        pass


def launch(nproc_per_node: int, argv: Sequence[str], threads: Optional[int] = None,
           prog: str = "convkit train") -> int:
    """Run ``python -m convkit <argv>`` as ``nproc_per_node`` ranks on this machine through
    ``torch.distributed.run`` (standalone rendezvous) and return the exit status: 0, or the
    first failed rank's exit code after printing one line naming the rank and its error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc_per_node),
                       "--module", "convkit", *argv])
    # torchrun would set OMP_NUM_THREADS=1 for every rank; give them their share of the cores
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads is not None or saved is None:
        os.environ["OMP_NUM_THREADS"] = str(threads or default_threads(nproc_per_node))
    try:
        run(args)
        return 0
    except ChildFailedError as e:
        rank, failure = first_failure(e)
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", "")
        detail = f": {message}" if message and "enable traceback" not in message else \
            " (its error is printed above)"
        print(f"{prog}: error: rank {rank} of {nproc_per_node} failed with exit code "
              f"{failure.exitcode}{detail}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def first_failure(error) -> tuple:
    """The rank that failed first in a ``ChildFailedError``: ranks that exited with an error
    come before ranks the launcher stopped with a signal, then the earliest."""
    def when(failure) -> float:
        info = failure.message.get("extraInfo", {}) if isinstance(failure.message, dict) else {}
        return float(info.get("time", failure.timestamp))
    items = sorted(error.failures.items(), key=lambda kv: (kv[1].exitcode <= 0, when(kv[1]),
                                                           kv[0]))
    return items[0]


__all__ = ["Ranks", "launched", "cores", "default_threads", "set_threads", "backend_for",
           "timeout", "setup", "active", "reduce_sum", "gather", "teardown", "record_error",
           "launch", "first_failure", "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S"]
