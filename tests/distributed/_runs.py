"""The spawned runs the distributed tests read, each started once per test session.

Starting a process costs seconds on a small machine, so the runs are few: the killed SVI run
(2 ranks), then one 2-rank run of the conjugate suite and the SVI resume, and one 3-rank run of
the conjugate suite.
"""

from __future__ import annotations

import functools
import tempfile

from distributed import _workers as w

from pyro_vi.distributed import SpawnError, spawn

SVI_STEPS = 300
KILL_AT = 50


@functools.cache
def killed() -> tuple[str, SpawnError | None]:
    """Rank 1 SIGKILLs itself at step 50 of a checkpointed fit_svi (rank 0 wrote step 40)."""
    folder = tempfile.mkdtemp(prefix="pyro-vi-ddp-")
    try:
        spawn(w.svi_suite, 2, folder, SVI_STEPS, KILL_AT, timeout=90)
    except SpawnError as err:
        return folder, err
    return folder, None


@functools.cache
def suite(world: int) -> list[dict]:
    """Every rank's results: the conjugate suite, and with 2 ranks the SVI resume too."""
    if world == 2:
        folder, _ = killed()
        return spawn(w.two_rank_suite, 2, folder, SVI_STEPS, timeout=180)
    return spawn(w.conjugate_suite, world, timeout=150)
