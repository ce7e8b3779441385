"""Training on several processes with ``torchrun``: one process per GPU, or per share of the CPU cores.

``torchrun --nproc_per_node=K -m srlib train ...`` starts ``K`` copies of ``srlib train``
(``--nnodes`` and a rendezvous address spread them over machines) and puts ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in each one's environment. :func:`srlib.train.train`
then trains one model with :class:`torch.nn.parallel.DistributedDataParallel` (DDP):

* every process reads its own slice of each global batch (the patch sequence is the
  one a single process would read, see :func:`rank_batch_size`);
* each computes the L1 loss of its slice; during ``backward`` DDP averages the gradients
  over the processes (an all-reduce), so with equal slices one step is the step of a
  single process on the whole batch, up to the order of the float32 sums;
* rank 0 alone writes checkpoints, validates, writes the report and shows progress.

What this module gives the training loop:

* :func:`process_layout` reads torchrun's variables (``None`` for a plain run);
* :func:`rank_device` and :func:`start` pick the process's device (``cuda:LOCAL_RANK`` or
  the CPU) and join the process group (NCCL on CUDA, gloo on the CPU);
* :func:`exchange` sums a few numbers over the processes together with which of them
  failed, so that an error on one process stops every process at the same point instead
  of leaving the others waiting in a collective;
* :func:`broadcast` sends rank 0's object (a checkpoint being resumed) to every process;
* :func:`stop` leaves the process group.

Collectives wait at most :data:`TIMEOUT_ENV` minutes (default
:data:`DEFAULT_TIMEOUT_MINUTES`): long enough for rank 0's validation while the others
wait, short enough that a process lost without a word (killed, a machine gone) ends
the run.

Source: the PyTorch documentation of ``torchrun`` (``torch/distributed/run.py``) and of
DDP (``torch/nn/parallel/distributed.py``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DEFAULT_TIMEOUT_MINUTES", "TIMEOUT_ENV", "ProcessGroup", "broadcast", "exchange", "process_layout",
           "rank_batch_size", "rank_device", "start", "stop"]

TIMEOUT_ENV = "SRLIB_DDP_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 30.0


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a multi-process run (what :func:`start` returns).

    Attributes:
        rank: this process's number, ``0 .. world_size - 1`` (rank 0 writes the files).
        local_rank: its number on this machine (which GPU it uses).
        world_size: number of processes, at least 2.
        device: where this process trains (``cuda:LOCAL_RANK`` or ``cpu``).
        backend: ``"nccl"`` (CUDA) or ``"gloo"`` (CPU).
        owned: whether :func:`start` created the default process group (and :func:`stop` ends it).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str
    owned: bool = True

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"{name} is not set; start the run with torchrun, which sets RANK, LOCAL_RANK and "
                             "WORLD_SIZE")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer; start the run with torchrun") from None


def process_layout(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` of a process started by ``torchrun``; ``None`` for a single process.

    Args:
        environ: the environment to read (default ``os.environ``): ``WORLD_SIZE``,
            ``RANK`` and ``LOCAL_RANK`` as torchrun sets them.

    Returns:
        ``None`` when ``WORLD_SIZE`` is unset or 1, else the three integers.

    Raises:
        ValueError: a variable is not an integer, ``RANK`` is missing, or the values
            do not fit (``0 <= RANK < WORLD_SIZE``, ``LOCAL_RANK >= 0``).
    """
    environ = os.environ if environ is None else environ
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    if world_size == 1:
        return None
    rank = _env_int(environ, "RANK")
    local_rank = _env_int(environ, "LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"WORLD_SIZE={world_size} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")
    return rank, local_rank, world_size


def rank_batch_size(global_batch: int, world_size: int) -> int:
    """Patches per process and step: the global batch split evenly over ``world_size`` processes.

    Process ``r`` of ``W`` reads samples ``g B + r b .. g B + (r + 1) b - 1`` of global batch
    ``g`` (``B`` the global batch, ``b = B / W``), so the processes together read exactly the
    batch a single process would, in the same order.

    Raises:
        ValueError: ``global_batch`` is not a multiple of ``world_size`` (the message
            names the batch sizes and process counts that fit).
    """
    if world_size < 1 or global_batch < 1:
        raise ValueError(f"batch size and number of processes must be positive, got {global_batch} and {world_size}")
    if global_batch % world_size:
        fits = [k for k in range(1, global_batch + 1) if global_batch % k == 0]
        lower = global_batch - global_batch % world_size
        raise ValueError(
            f"batch_size {global_batch} (the global batch) cannot be split evenly over {world_size} processes; "
            f"use --batch-size {lower or world_size} or {lower + world_size}, or run {fits} processes "
            "(torchrun --nproc_per_node times --nnodes)"
        )
    return global_batch // world_size


def rank_device(requested: str | None, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` on its machine.

    Args:
        requested: ``None`` / ``"auto"`` (CUDA when available, else the CPU), ``"cuda"``
            or ``"cpu"``; a device index is not accepted, each process takes the GPU of
            its ``LOCAL_RANK``.
        local_rank: the process's number on its machine.

    Returns:
        ``torch.device("cuda", local_rank)`` or ``torch.device("cpu")``.

    Raises:
        ValueError: a device with an index (``cuda:1``), MPS or another type, or fewer
            visible GPUs than processes on this machine.
        RuntimeError: ``cuda`` requested but CUDA is not available.
    """
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"multi-process training runs on CUDA (NCCL) or on the CPU (gloo), not on {requested!r}; "
                         "use --device cuda or --device cpu")
    if device.index is not None:
        raise ValueError(f"under torchrun each process uses the GPU of its LOCAL_RANK; pass --device cuda "
                         f"(no index), not {requested!r} (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but CUDA is not available; use --device cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK {local_rank} but only {count} GPU(s) are visible on this machine; "
                         f"start at most {count} processes per machine (torchrun --nproc_per_node={count})")
    return torch.device("cuda", local_rank)


def _timeout() -> timedelta:
    value = os.environ.get(TIMEOUT_ENV)
    if value in (None, ""):
        return timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} must be a positive number of minutes")
    return timedelta(minutes=minutes)


def start(requested_device: str | None, environ: Mapping[str, str] | None = None) -> ProcessGroup | None:
    """Join the process group of a torchrun run; ``None`` (nothing done) for a single process.

    Reads the layout with :func:`process_layout`, picks the device with :func:`rank_device`
    and initialises the default process group from torchrun's rendezvous variables
    (``MASTER_ADDR`` / ``MASTER_PORT``): NCCL on CUDA, gloo on the CPU. A group already
    initialised by the caller is used as it is (and left to the caller to end).

    Args:
        requested_device: ``TrainConfig.device``.
        environ: the environment to read (default ``os.environ``).

    Raises:
        ValueError: see :func:`process_layout` and :func:`rank_device`; a bad
            :data:`TIMEOUT_ENV`; a caller's group whose size is not ``WORLD_SIZE``.
        RuntimeError: CUDA requested but not available; the rendezvous fails.
    """
    layout = process_layout(environ)
    if layout is None:
        return None
    rank, local_rank, world_size = layout
    device = rank_device(requested_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(f"a process group of size {dist.get_world_size()} (rank {dist.get_rank()}) is already "
                             f"initialised, but WORLD_SIZE={world_size} and RANK={rank}")
        return ProcessGroup(rank, local_rank, world_size, device, dist.get_backend(), owned=False)
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives and broadcast_object_list use the current device
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            options["device_id"] = device  # binds NCCL to it at once (torch >= 2.3)
    dist.init_process_group(backend=backend, timeout=_timeout(), **options)
    return ProcessGroup(rank, local_rank, world_size, device, backend, owned=True)


def exchange(group: ProcessGroup, values: Sequence[float], failed: bool) -> tuple[list[float], list[int]]:
    """Sum ``values`` over all processes and learn which processes failed, in one all-reduce.

    Every process must call it at the same point of the run (a process that failed calls it
    with ``failed=True`` instead of raising at once), so that all of them stop together.

    Args:
        group: this process's :class:`ProcessGroup`.
        values: this process's numbers (float64 on the wire), the same count on every process.
        failed: whether this process failed since the last exchange.

    Returns:
        ``(sums, failed_ranks)``: the element-wise sums of ``values`` and the sorted ranks
        that passed ``failed=True``.
    """
    count = len(values)
    message = torch.zeros(count + group.world_size, dtype=torch.float64, device=group.device)  # (V + W,)
    if count:
        message[:count] = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if failed:
        message[count + group.rank] = 1.0  # one flag per rank
    dist.all_reduce(message, op=dist.ReduceOp.SUM)
    host = message.cpu().tolist()
    return host[:count], [rank for rank in range(group.world_size) if host[count + rank] > 0]


def broadcast(group: ProcessGroup, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (pickled; keep tensors in it on the CPU)."""
    box = [obj if group.is_main else None]
    dist.broadcast_object_list(box, src=0, device=group.device if group.device.type == "cuda" else None)
    return box[0]


def stop(group: ProcessGroup | None) -> None:
    """Leave the process group that :func:`start` created (nothing for ``None`` or a caller's group)."""
    if group is not None and group.owned and dist.is_initialized():
        dist.destroy_process_group()
