"""Comm in a group of one (in this process) and on 2 spawned ranks: sums, broadcasts, votes."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

from pyro_vi.distributed import Comm, RankError, backend_for, free_port
from pyro_vi.distributed.collectives import _rebuild
from pyro_vi.errors import NumericalError
from pyro_vi.svi.checkpoint import CheckpointError


@pytest.fixture
def group():
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                             world_size=1, timeout=timedelta(seconds=30))
    try:
        yield Comm()
    finally:
        tdist.destroy_process_group()


def test_without_a_group_comm_says_what_to_do():
    with pytest.raises(RuntimeError, match="initialised process group"):
        Comm()


def test_sum_keeps_shapes_dtypes_and_values(group):
    a = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
    b = torch.tensor(2.5, dtype=torch.float32)
    sa, sb = group.sum((a, b))
    assert sa.shape == a.shape
    assert sa.dtype == torch.float64
    assert sb.dtype == torch.float32
    assert torch.equal(sa, a)
    assert float(sb) == 2.5


def test_gather_rows_broadcast_and_counts(group):
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(group.gather_rows(x), x)
    assert torch.equal(group.broadcast([x])[0], x)
    assert group.counts(5) == [5]
    assert group.broadcast_object({"a": 1}) == {"a": 1}
    group.check_identical([x], what="x")


def test_fail_raises_the_error_itself_on_its_rank(group):
    err = NumericalError("bad sweep")
    with pytest.raises(NumericalError, match="^bad sweep$") as got:
        group.fail(err)
    assert got.value is err
    assert got.value.agreed
    with pytest.raises(NumericalError):  # an agreed error is re-raised without a new vote
        group.fail(got.value)


def test_errors_are_rebuilt_by_class_name():
    exc = _rebuild(("pyro_vi.errors", "NumericalError"), "rank 1 of 2: x")
    assert type(exc) is NumericalError
    assert str(exc) == "rank 1 of 2: x"
    # a class whose constructor needs more than a message is made without its __init__
    exc = _rebuild(("pyro_vi.svi.checkpoint", "CheckpointError"), "rank 0 of 2: disk full")
    assert type(exc) is CheckpointError
    assert str(exc) == "rank 0 of 2: disk full"
    exc = _rebuild(("no.such.module", "Error"), "m")
    assert type(exc) is RankError
    assert "no.such.module.Error: m" in str(exc)


def test_nccl_is_picked_for_cuda_tensors():
    assert backend_for(None) == "gloo"
    assert backend_for(torch.device("cpu")) == "gloo"
    expected = "nccl" if tdist.is_nccl_available() else "gloo"
    assert backend_for("cuda") == expected
