"""Data-parallel fits on :mod:`torch.distributed`: collectives, shards, local launches.

``cavi(..., distributed=True)``, ``svi_cavi(..., distributed=True)`` and
``fit_svi(..., distributed=True)`` run inside an initialised process group, each rank on its
own rows; this package holds what they share: :class:`Comm` (voting collectives),
:func:`shard` / :func:`load_shard` (a rank's rows) and :func:`spawn` (N local processes).
"""

from pyro_vi.distributed.collectives import Comm, RankError, backend_for
from pyro_vi.distributed.launch import SpawnError, free_port, init_from_env, spawn
from pyro_vi.distributed.shard import load_shard, shard, shard_bounds

__all__ = ["Comm", "RankError", "SpawnError", "backend_for", "free_port", "init_from_env",
           "load_shard", "shard", "shard_bounds", "spawn"]
