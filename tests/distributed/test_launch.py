"""spawn: N local ranks in one group, results in rank order, errors and hangs reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from distributed import _workers as w

from pyro_vi import cavi
from pyro_vi.cavi.engine import param_tensors
from pyro_vi.distributed import SpawnError, spawn


def test_results_come_back_in_rank_order_and_a_raising_rank_is_named():
    with pytest.raises(SpawnError, match=r"rank 1 raised KeyError: 'only rank 1 fails'") as err:
        spawn(w.rank_and_world, 2, "t", threads=1, timeout=60)
    outcomes = err.value.outcomes
    assert outcomes[0] == (True, ("t", 0, 2, 1))
    assert "Traceback" in outcomes[1][1]


def test_ranks_that_hang_are_stopped_at_the_timeout():
    with pytest.raises(SpawnError, match="did not finish within 3 s"):
        spawn(w.wait_forever, 2, timeout=3)


@pytest.mark.parametrize(("kwargs", "error"), [({"nproc": 0}, ValueError),
                                                ({"backend": "mpi"}, ValueError),
                                                ({"timeout": 0}, ValueError)])
def test_bad_options_are_refused(kwargs, error):
    with pytest.raises(error):
        spawn(w.rank_and_world, **{"nproc": 1, **kwargs})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA (CI has no GPU)")
def test_nccl_carries_the_statistics_of_cuda_tensors():
    ranks = spawn(w.nccl_gmm, torch.cuda.device_count(), backend="nccl", timeout=300)
    ref = cavi(w.GaussianMixture(3, init=w.responsibilities()), w.mixture(), max_iter=w.SWEEPS,
               tol=0.0, warn=False)
    assert {r["backend"] for r in ranks} == {"nccl"}
    assert ranks[0]["elbo"] == pytest.approx(ref.elbo, rel=1e-10)
    for a, b in zip(ranks[0]["params"], param_tensors(ref.params), strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-8, atol=1e-8)
