"""Gamma–Exponential: q is the exact posterior, so the ELBO is the closed-form log evidence."""

from __future__ import annotations

import math

import torch

from pyro_vi import cavi
from pyro_vi.models.gamma_exponential import GammaExponential


def test_elbo_is_the_log_evidence():
    # p(x) = ∫ Gam(λ | a0, b0) Π λ e^{-λ x_n} dλ = b0^a0 Γ(a0 + N) / (Γ(a0) (b0 + Σx)^(a0 + N)),
    # written here independently of the model code. Float64 sums of 7 terms: round-off ~1e-15.
    a0, b0 = 2.5, 0.7
    x = torch.tensor([0.3, 1.2, 0.7, 2.5, 0.1, 0.9, 4.0], dtype=torch.float64)
    n, s = len(x), float(x.sum())
    log_evidence = (a0 * math.log(b0) + math.lgamma(a0 + n) - math.lgamma(a0)
                    - (a0 + n) * math.log(b0 + s))
    fit = cavi(GammaExponential(concentration=a0, rate=b0), x)
    assert abs(fit.elbo - log_evidence) <= 1e-10 * abs(log_evidence)
    assert float(fit.params.rate.concentration) == a0 + n
    assert abs(float(fit.params.rate.rate) - (b0 + s)) <= 1e-14 * (b0 + s)
