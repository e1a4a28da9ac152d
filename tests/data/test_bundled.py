"""The bundled data: Old Faithful (shape, provenance, standardisation) and eight schools."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch

from pyro_vi import load_eight_schools, load_old_faithful


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


# ------------------------------------------------------------------------------ eight schools
def test_eight_schools_ships_inside_the_package_with_a_header():
    path = resources.files("pyro_vi").joinpath("data/eight_schools.csv")
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["school", "y", "sigma"]
    assert [r[0] for r in rows[1:]] == list("ABCDEFGH")


def test_eight_schools_matches_rubin_1981():
    # Rubin (1981) Table 2, as printed in Gelman et al. (2013) Table 5.2: an independent record
    # typed into the test, so a typo in the CSV fails here.
    y, sigma = load_eight_schools()
    assert y.dtype == sigma.dtype == torch.float64
    assert y.tolist() == [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    assert sigma.tolist() == [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
    # BDA3 §5.5: the pooled estimate (precision-weighted mean) is 7.7 with sd 4.1.
    w = sigma**-2
    assert round(float((w * y).sum() / w.sum()), 1) == 7.7
    assert round(float(w.sum() ** -0.5), 1) == 4.1


def test_eight_schools_dtype_option_and_checks():
    y, sigma = load_eight_schools(dtype="float32")
    assert y.dtype == sigma.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        load_eight_schools(dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        load_eight_schools(dtype=3)
