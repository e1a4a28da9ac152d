"""Run a function on N local processes with an initialised process group (CI, the CLI).

:func:`spawn` is for one machine: it starts ``nproc`` fresh interpreters (the ``spawn`` start
method), joins them to a gloo (CPU) or NCCL (CUDA) group on ``127.0.0.1`` and calls
``fn(*args)`` in each; the return values come back in rank order. Several machines, or a
long-running job, are ``torchrun``'s work (see the README): a script that calls
:func:`init_from_env` runs unchanged under both.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_vi._checks import check_int, check_real
from pyro_vi.distributed.collectives import backend_for

__all__ = ["SpawnError", "free_port", "init_from_env", "spawn"]


class SpawnError(RuntimeError):
    """A spawned rank raised or the ranks did not finish in time; ``outcomes`` per rank."""

    def __init__(self, message: str, outcomes: dict[int, Any]):
        super().__init__(message)
        self.outcomes = outcomes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_from_env(*, device: Any = None, timeout: float = 1800.0) -> tuple[int, int]:
    """``init_process_group`` from torchrun's environment; returns ``(rank, world_size)``.

    The backend is :func:`~pyro_vi.distributed.collectives.backend_for` ``device`` (NCCL for
    CUDA, else gloo); with CUDA each process takes GPU ``LOCAL_RANK``. Without torchrun's
    variables (a plain ``python script.py``) it starts a group of one.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1, timeout=timedelta(seconds=timeout))
    else:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


def _entry(rank: int, world: int, port: int, backend: str, timeout: float, threads: int,
           fn: Callable[..., Any], args: tuple[Any, ...], out: Any) -> None:
    try:
        torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout))
        try:
            out.put((rank, True, fn(*args)))
        finally:
            dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        out.put((rank, False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def spawn(fn: Callable[..., Any], nproc: int, *args: Any, backend: str = "gloo",
          timeout: float = 120.0, threads: int = 1) -> list[Any]:
    """Call ``fn(*args)`` on ``nproc`` new processes joined in one process group.

    Parameters
    ----------
    fn
        A picklable function (defined at module level in an importable module); inside it
        ``torch.distributed`` is initialised (``get_rank()`` tells the rank).
    nproc
        Number of processes (ranks).
    backend
        ``"gloo"`` (CPU) or ``"nccl"`` (CUDA; rank r takes GPU ``r mod device_count``).
    timeout
        Seconds for the whole run, also the collectives' timeout: a rank still running after
        it is terminated and :class:`SpawnError` is raised.
    threads
        ``torch.set_num_threads`` in each process.

    Returns
    -------
    list
        ``fn``'s return value on each rank, in rank order (they must be picklable).

    Raises
    ------
    SpawnError
        A rank raised (its traceback is in the message) or the run timed out.
    """
    nproc = check_int("nproc", nproc, minimum=1)
    timeout = check_real("timeout", timeout, positive=True)
    threads = check_int("threads", threads, minimum=1)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, nproc, port, backend, timeout, threads, fn,
                                              args, out), daemon=True) for r in range(nproc)]
    for p in procs:
        p.start()
    outcomes: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outcomes) < nproc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpawnError(f"spawn: ranks {sorted(set(range(nproc)) - set(outcomes))} did "
                                 f"not finish within {timeout:g} s", outcomes)
            try:
                rank, ok, value = out.get(timeout=min(left, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in outcomes]
                if dead and all(p.exitcode not in (None, 0) for p in (procs[r] for r in dead)):
                    time.sleep(0.5)  # a message may still be in flight
                    if out.empty():
                        raise SpawnError(f"spawn: rank(s) {dead} died (exit codes "
                                         f"{[procs[r].exitcode for r in dead]})", outcomes) from None
                continue
            outcomes[rank] = (ok, value)
    finally:
        done = len(outcomes) == nproc  # else a rank hangs or died: stop the others now
        for p in procs:
            if not done and p.is_alive():
                p.terminate()
            p.join(timeout=10 if done else 5)
            if p.is_alive():
                p.kill()
                p.join()
    failed = {r: v for r, (ok, v) in outcomes.items() if not ok}
    if failed:
        first = min(failed)
        raise SpawnError(f"spawn: rank {first} raised {failed[first]}", outcomes)
    return [outcomes[r][1] for r in range(nproc)]
