"""The bundled Old Faithful data: shape, provenance and standardisation."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch

from pyro_vi import load_old_faithful


def test_data_file_ships_inside_the_package():
    path = resources.files("pyro_vi").joinpath("data/old_faithful.csv")
    assert path.is_file()
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["eruptions", "waiting"]
    assert len(rows) == 273  # header + R's 272 eruptions


def test_shape_dtype_and_first_and_last_rows():
    x = load_old_faithful()
    assert x.shape == (272, 2)
    assert x.dtype == torch.float64
    # R: head(faithful, 1) is 3.600 79; tail(faithful, 1) is 4.467 74.
    assert x[0].tolist() == [3.6, 79.0]
    assert x[-1].tolist() == [4.467, 74.0]


def test_matches_r_summary_of_faithful():
    # R's summary(faithful) / sapply(faithful, mean, sd) (printed to 7 significant digits), an
    # independent record of the same 272 rows: a typo in any row would move a mean by >= 1e-3/272.
    x = load_old_faithful()
    torch.testing.assert_close(x.min(0).values, torch.tensor([1.6, 43.0], dtype=torch.float64))
    torch.testing.assert_close(x.max(0).values, torch.tensor([5.1, 96.0], dtype=torch.float64))
    torch.testing.assert_close(x.mean(0), torch.tensor([3.487783, 70.89706], dtype=torch.float64),
                               rtol=0, atol=5e-6)
    torch.testing.assert_close(x.std(0), torch.tensor([1.141371, 13.59497], dtype=torch.float64),
                               rtol=0, atol=5e-6)


def test_standardize_gives_zero_mean_unit_sd():
    raw = load_old_faithful()
    z = load_old_faithful(standardize=True)
    # float64 round-off on 272 values of size O(1): far below 1e-12.
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # an affine map of the raw columns, not a reshuffle
    torch.testing.assert_close(z * raw.std(0, unbiased=False) + raw.mean(0), raw)


def test_dtype_option():
    x = load_old_faithful(dtype=torch.float32)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, load_old_faithful().float())


def test_a_non_floating_dtype_is_a_value_error_and_a_non_dtype_a_type_error():
    # pyro_vi._checks rule: a torch.dtype outside the floating ones is the right kind, bad range
    with pytest.raises(ValueError, match="dtype"):
        load_old_faithful(dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        load_old_faithful(dtype=3)
    assert load_old_faithful(dtype="float32").dtype == torch.float32
