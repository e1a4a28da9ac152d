r"""Compare a variational posterior with NUTS on the same Pyro model.

:func:`compare_to_mcmc` runs Pyro's NUTS (Hoffman & Gelman 2014) on the model — discrete
latent sites with enumerable support summed out by parallel enumeration, as Pyro's HMC does —
draws from the guide, and tabulates, per scalar parameter, the two means and sds, the
standardized mean difference :math:`(\bar\theta_{VI} - \bar\theta_{NUTS}) / sd_{NUTS}` and the
sd ratio :math:`sd_{VI} / sd_{NUTS}`. Mean-field families typically give sd ratios below one
(Bishop 2006, §10.1.2; Turner & Sahani 2011); the table shows by how much.

Mixtures need their components aligned first: the posterior is invariant to permuting the
labels, so NUTS draws may visit any of the :math:`K!` labelings while the guide sits in one.
:func:`match_components` aligns every NUTS draw to the guide by Hungarian matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro.infer import MCMC, NUTS, config_enumerate
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

from pyro_vi._checks import check_bool, check_callable, check_int
from pyro_vi._io import save_figure
from pyro_vi.diagnostics._arviz_compat import bulk_ess
from pyro_vi.diagnostics._draws import check_num_samples, draw_from_guide, seeded
from pyro_vi.diagnostics._sites import inspect_model, node

__all__ = ["MCMCComparison", "PositiveDefiniteVectorTransform", "align_chains",
           "align_from_spec", "compare_to_mcmc", "label_alignment", "match_components"]

Align = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]


class PositiveDefiniteVectorTransform(Transform):
    r"""Bijection from :math:`\mathbb{R}^{D(D+1)/2}` onto :math:`D \times D` SPD matrices.

    The vector fills a lower-triangular :math:`L` row by row with an exponentiated diagonal;
    the output is :math:`\Lambda = L L^\top`. PyTorch's ``biject_to(positive_definite)`` does
    not exist, and its ``PositiveDefiniteTransform`` starts from a full matrix (the upper
    triangle is ignored, leaving flat directions that NUTS would drift along). With
    :math:`\ell = \log \mathrm{diag}\, L`,

    .. math::

        \log \left|\frac{\partial \Lambda}{\partial v}\right|
        = D \log 2 + \sum_{i=1}^{D} (D - i + 2)\, \ell_i,

    from :math:`|\partial (LL^\top)/\partial L| = 2^D \prod_i L_{ii}^{D-i+1}` (Muirhead 1982,
    Theorem 2.1.9) times the exponential's :math:`\prod_i L_{ii}`.
    """

    domain = constraints.real_vector
    codomain = constraints.positive_definite
    bijective = True

    def __init__(self, dim: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.dim = dim
        self._rows, self._cols = torch.tril_indices(dim, dim)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositiveDefiniteVectorTransform) and other.dim == self.dim

    def _tril(self, v: Tensor) -> Tensor:
        out = v.new_zeros(v.shape[:-1] + (self.dim, self.dim))
        out[..., self._rows, self._cols] = v
        diag = out.diagonal(dim1=-2, dim2=-1)
        return out - torch.diag_embed(diag) + torch.diag_embed(diag.exp())

    def _call(self, v: Tensor) -> Tensor:
        low = self._tril(v)
        return low @ low.transpose(-1, -2)

    def _inverse(self, m: Tensor) -> Tensor:
        low = torch.linalg.cholesky(m)
        diag = low.diagonal(dim1=-2, dim2=-1)
        low = low - torch.diag_embed(diag) + torch.diag_embed(diag.log())
        return low[..., self._rows, self._cols]

    def log_abs_det_jacobian(self, v: Tensor, m: Tensor) -> Tensor:
        r""":math:`\log|\partial \Lambda / \partial v|`, shape ``v.shape[:-1]``."""
        diag_idx = (self._rows == self._cols).nonzero().squeeze(-1)
        ell = v[..., diag_idx]
        coef = torch.arange(self.dim + 1, 1, -1, dtype=v.dtype, device=v.device)
        return self.dim * math.log(2.0) + (coef * ell).sum(-1)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        """Shape ``(..., D(D+1)/2)`` -> ``(..., D, D)``."""
        return torch.Size(shape[:-1]) + (self.dim, self.dim)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        """Shape ``(..., D, D)`` -> ``(..., D(D+1)/2)``."""
        return torch.Size(shape[:-2]) + (self.dim * (self.dim + 1) // 2,)


def _transform(support: constraints.Constraint, shape: Sequence[int]) -> Transform:
    """Constrained -> unconstrained transform for one site (NUTS works unconstrained)."""
    base = support.base_constraint if isinstance(support, constraints.independent) else support
    if base is constraints.positive_definite or isinstance(
            base, type(constraints.positive_definite)):
        return PositiveDefiniteVectorTransform(shape[-1]).inv
    return biject_to(support).inv


def match_components(by: str, sites: Sequence[str], *, axis: int = 0) -> Align:
    r"""Align mixture components of NUTS draws to the guide by Hungarian matching.

    For every NUTS draw :math:`s`, the permutation :math:`\pi_s` of the :math:`K` components
    minimising :math:`\sum_k \lVert \theta^{(s)}_{by,\pi_s(k)} - \bar\theta^{VI}_{by,k}
    \rVert^2` (the guide's mean of site ``by``) is found with
    :func:`scipy.optimize.linear_sum_assignment` (Kuhn 1955; Stephens 2000 discusses such
    relabelling for mixtures) and applied to every site in ``sites`` along the component
    axis ``axis`` (counted in the site's own shape, without the draw axis).

    Examples
    --------
    >>> import numpy as np
    >>> align = match_components("loc", ["loc", "w"])
    >>> nuts = {"loc": np.array([[5.0, 0.0]]), "w": np.array([[0.9, 0.1]])}
    >>> vi = {"loc": np.array([[0.0, 5.0]])}
    >>> out = align(nuts, vi)
    >>> out["loc"].tolist(), out["w"].tolist()
    ([[0.0, 5.0]], [[0.1, 0.9]])
    """
    from scipy.optimize import linear_sum_assignment

    def align(nuts: dict[str, np.ndarray], vi: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in (by, *sites):
            if name not in nuts:
                raise ValueError(f"match_components: no NUTS draws of site {name!r}")
        if by not in vi:
            raise ValueError(f"match_components: no guide draws of site {by!r}")
        ref = np.moveaxis(vi[by].mean(0), axis, 0)
        k = ref.shape[0]
        ref = ref.reshape(k, -1)
        draws = np.moveaxis(nuts[by], axis + 1, 1).reshape(nuts[by].shape[0], k, -1)
        perms = np.empty((draws.shape[0], k), dtype=np.int64)
        for s, d in enumerate(draws):
            cost = ((d[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
            rows, cols = linear_sum_assignment(cost)
            perms[s, cols] = rows
        out = dict(nuts)
        for name in sites:
            moved = np.moveaxis(nuts[name], axis + 1, 1)
            if moved.shape[1] != k:
                raise ValueError(f"match_components: site {name!r} has {moved.shape[1]} "
                                 f"components along axis {axis}, {by!r} has {k}")
            index = perms.reshape(perms.shape + (1,) * (moved.ndim - 2))
            out[name] = np.moveaxis(np.take_along_axis(moved, index, axis=1), 1, axis + 1)
        return out

    return align


def label_alignment(result: Any) -> Any:
    """A fit result's label-alignment spec: its conjugate model's ``label_alignment()``, or None.

    Examples
    --------
    >>> label_alignment(object()) is None
    True
    """
    cavi_model = getattr(result, "cavi_model", None)
    return None if cavi_model is None else cavi_model.label_alignment()


def align_from_spec(spec: Any) -> Align:
    """:func:`match_components` built from a model's ``label_alignment()`` spec.

    ``spec`` has ``by``, ``sites`` and ``axis`` (see :class:`pyro_vi.cavi.model.LabelAlignment`).

    Examples
    --------
    >>> from collections import namedtuple
    >>> Spec = namedtuple("Spec", "by sites axis")
    >>> align = align_from_spec(Spec("loc", ("loc",), 0))
    >>> align({"loc": np.array([[5.0, 0.0]])}, {"loc": np.array([[0.0, 5.0]])})["loc"].tolist()
    [[0.0, 5.0]]
    """
    return match_components(spec.by, list(spec.sites), axis=spec.axis)


def align_chains(chains: Sequence[Mapping[str, np.ndarray]], spec: Any) -> list[dict[str, np.ndarray]]:
    r"""Relabel the components of every chain (one fit each) to match chain 0's.

    One fit's guide sits in one labelling, so one permutation per chain suffices: the one
    minimising :math:`\sum_k \lVert \bar\theta^{(c)}_{by,\pi(k)} - \bar\theta^{(0)}_{by,k}
    \rVert^2` over the chains' means of site ``spec.by`` (Hungarian matching,
    :func:`scipy.optimize.linear_sum_assignment`). It permutes ``spec.sites`` along their
    component axis and maps the values of ``spec.labels`` (component indices) to the new
    labels. Restarts that found one solution with permuted labels then agree exactly.

    Examples
    --------
    >>> from collections import namedtuple
    >>> Spec = namedtuple("Spec", "by sites axis labels")
    >>> a = {"loc": np.array([[0.0, 5.0]]), "z": np.array([[0, 1, 1]])}
    >>> b = {"loc": np.array([[5.0, 0.0]]), "z": np.array([[1, 0, 0]])}
    >>> out = align_chains([a, b], Spec("loc", ("loc",), 0, ("z",)))
    >>> out[1]["loc"].tolist(), out[1]["z"].tolist()
    ([[0.0, 5.0]], [[0, 1, 1]])
    """
    from scipy.optimize import linear_sum_assignment

    out = [dict(c) for c in chains]
    if len(out) < 2 or spec.by not in out[0]:
        return out
    axis = spec.axis

    def means(c: Mapping[str, np.ndarray]) -> np.ndarray:
        m = np.moveaxis(c[spec.by].mean(0), axis, 0)
        return m.reshape(m.shape[0], -1)

    ref = means(out[0])
    for c in out[1:]:
        cost = ((means(c)[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(ref.shape[0], dtype=np.int64)
        perm[cols] = rows  # new component j is old component perm[j]
        for name in spec.sites:
            if name in c:
                c[name] = np.take(c[name], perm, axis=axis + 1)
        inverse = np.argsort(perm)
        for name in getattr(spec, "labels", ()):
            if name in c:
                c[name] = inverse[c[name]]
    return out


@dataclass(frozen=True)
class MCMCComparison:
    """Result of :func:`compare_to_mcmc`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter: ``param``, ``vi_mean``, ``vi_sd``, ``nuts_mean``,
        ``nuts_sd``, ``std_mean_diff`` ((VI − NUTS mean) / NUTS sd), ``sd_ratio`` (VI sd /
        NUTS sd) and ``nuts_ess`` (ArviZ bulk ESS of the NUTS draws).
    figure_path : pathlib.Path or None
        The overlaid density plot, when ``plot`` was given.
    mcmc : pyro.infer.MCMC
        The NUTS run (``mcmc.get_samples()`` holds the unaligned draws).
    """

    table: pd.DataFrame
    figure_path: Path | None
    mcmc: MCMC

    def worst(self, n: int = 5) -> pd.DataFrame:
        """Rows with the largest ``|std_mean_diff|`` or ``|log sd_ratio|``, worst first."""
        score = np.maximum(self.table["std_mean_diff"].abs(),
                           np.log(self.table["sd_ratio"]).abs())
        return self.table.assign(score=score).nlargest(n, "score").drop(columns="score")


def _labels(name: str, shape: Sequence[int]) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _table(vi: Mapping[str, np.ndarray], nuts: Mapping[str, np.ndarray],
           nuts_ess: Mapping[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for name in nuts:
        v, m = vi[name], nuts[name]
        shape = m.shape[1:]
        for label, i in zip(_labels(name, shape), range(int(np.prod(shape, dtype=int))),
                            strict=True):
            a, b = v.reshape(v.shape[0], -1)[:, i], m.reshape(m.shape[0], -1)[:, i]
            sd = b.std(ddof=1)
            rows.append({"param": label, "vi_mean": a.mean(), "vi_sd": a.std(ddof=1),
                         "nuts_mean": b.mean(), "nuts_sd": sd,
                         "std_mean_diff": (a.mean() - b.mean()) / sd if sd > 0 else np.nan,
                         "sd_ratio": a.std(ddof=1) / sd if sd > 0 else np.nan,
                         "nuts_ess": float(nuts_ess[name].reshape(-1)[i])})
    return pd.DataFrame(rows)


def _plot(vi: Mapping[str, np.ndarray], nuts: Mapping[str, np.ndarray], table: pd.DataFrame,
          path: Path, max_params: int) -> Path:
    import matplotlib.pyplot as plt

    worst = MCMCComparison(table, None, None).worst(max_params)  # type: ignore[arg-type]
    labels = list(worst["param"])
    flat = {}
    for name in nuts:
        for i, label in enumerate(_labels(name, nuts[name].shape[1:])):
            if label in labels:
                flat[label] = (vi[name].reshape(vi[name].shape[0], -1)[:, i],
                               nuts[name].reshape(nuts[name].shape[0], -1)[:, i])
    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        a, b = flat[label]
        bins = np.histogram_bin_edges(np.concatenate([a, b]), bins=40)
        ax.hist(b, bins=bins, density=True, histtype="step", lw=1.5, label="NUTS")
        ax.hist(a, bins=bins, density=True, histtype="step", lw=1.5, label="VI")
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Posterior densities: VI vs NUTS (largest discrepancies)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def compare_to_mcmc(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                    num_samples: int = 500, warmup_steps: int = 500, num_chains: int = 1,
                    seed: int = 0, vi_samples: int = 2000, align: Align | None = None,
                    plot: str | Path | None = None, max_plot: int = 9,
                    params: Mapping[str, Any] | None = None, jit_compile: bool = False,
                    **kwargs: Any) -> MCMCComparison:
    r"""Run NUTS on ``model`` and compare its posterior with the guide's, parameter by parameter.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and a fitted guide, called with ``*args, **kwargs``.
    num_samples, warmup_steps, num_chains : int
        NUTS settings (``num_chains > 1`` runs chains in parallel processes).
    seed : int
        Seeds NUTS and the guide's draws; the global RNG state is restored afterwards.
    vi_samples : int
        Draws from the guide.
    align : callable, optional
        ``align(nuts_draws, vi_draws) -> nuts_draws`` on dicts of ``(draws, *site_shape)``
        arrays, applied before comparing, e.g. :func:`match_components` for mixtures (label
        switching). ``None`` compares draws as they are.
    plot : path, optional
        Write overlaid VI/NUTS histograms (density-normalised) of the ``max_plot`` worst
        parameters to this PNG.
    params : mapping, optional
        Constrained parameter values to run the guide with (a fit result's ``params``).
    jit_compile : bool
        JIT-trace NUTS's potential (about twice as fast; needs a model without
        data-dependent Python control flow).

    Returns
    -------
    MCMCComparison

    Raises
    ------
    ValueError
        Bad sizes, a guide that does not cover the model, or a discrete latent site without
        enumerable support (NUTS cannot sample it).

    .. warning::
       NUTS is the reference only if it mixed: check ``table.nuts_ess`` (and, with several
       chains, ``az.rhat`` of each ``mcmc.get_samples(group_by_chain=True)`` array). A mixture's posterior
       is multimodal in the labels; without ``align`` the NUTS moments of component
       parameters are averages over labelings. Only sites both NUTS and the guide sample
       (continuous latents) are compared. The standardized difference has Monte-Carlo
       error of about :math:`1/\sqrt{\mathrm{ESS}}`.

    References
    ----------
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15:1593-1623. Yao, Vehtari,
    Simpson & Gelman (2018), "Yes, but did it work?", ICML (VI vs MCMC comparisons). Stephens
    (2000), "Dealing with label switching in mixture models", JRSS B 62(4):795-809.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> def guide(y):  # the exact posterior N(y/2, 1/2)
    ...     pyro.sample("mu", dist.Normal(y / 2, 0.5 ** 0.5))
    >>> res = compare_to_mcmc(model, guide, torch.tensor(1.0), num_samples=100,
    ...                       warmup_steps=50, vi_samples=500)
    >>> list(res.table["param"]), bool(abs(res.table["std_mean_diff"][0]) < 0.6)
    (['mu'], True)
    """
    for name, v in (("num_samples", num_samples), ("num_chains", num_chains),
                    ("vi_samples", vi_samples), ("max_plot", max_plot)):
        check_num_samples(v, name=name)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if align is not None:
        check_callable("align", align)
    check_int("seed", seed, minimum=0)
    check_bool("jit_compile", jit_compile)
    structure = inspect_model(model, *args, **kwargs)
    for name in structure.latent:
        info = structure.sites[name]
        if info.discrete and not info.enumerable:
            raise ValueError(f"NUTS cannot sample discrete site {name!r} (no enumerable support)")
    draws = draw_from_guide(model, guide, *args, num_samples=vi_samples, seed=seed,
                            params=params, **kwargs)
    continuous = [n for n in structure.latent if not structure.sites[n].discrete]
    transforms = {}
    from pyro import poutine

    with torch.no_grad(), poutine.block():
        prior = poutine.trace(model).get_trace(*args, **kwargs)
    for name in continuous:
        transforms[name] = _transform(node(prior, name)["fn"].support, structure.sites[name].shape)
    kernel = NUTS(config_enumerate(model, default="parallel"),
                  max_plate_nesting=structure.max_plate_nesting, transforms=transforms,
                  jit_compile=jit_compile, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                num_chains=num_chains, disable_progbar=True)
    with seeded(seed):
        mcmc.run(*args, **kwargs)
    grouped = {k: v.detach().double().numpy() for k, v in
               mcmc.get_samples(group_by_chain=True).items() if k in continuous}
    nuts = {k: v.reshape((-1,) + v.shape[2:]) for k, v in grouped.items()}
    vi = {k: draws.values[k].detach().double().numpy() for k in continuous
          if k in draws.values}
    if align is not None:
        nuts = align(nuts, vi)
        grouped = {k: v.reshape(num_chains, num_samples, *v.shape[1:]) for k, v in nuts.items()}
    table = _table(vi, nuts, {k: bulk_ess(v) for k, v in grouped.items()})
    path = None if plot is None else _plot(vi, nuts, table, Path(plot), max_plot)
    return MCMCComparison(table, path, mcmc)
