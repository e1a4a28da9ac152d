"""Seeded initialisation of responsibilities: k-means++ seeding and random soft assignments."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["initial_responsibilities", "kmeans_plusplus"]


def _sq_dist(x: Tensor, centers: Tensor) -> Tensor:
    """Squared Euclidean distances, shape ``(N, C)``, without an ``N×C×D`` intermediate."""
    d = torch.linalg.vecdot(x, x).unsqueeze(-1) - 2.0 * x @ centers.T + (centers * centers).sum(-1)
    return d.clamp_min_(0.0)


def kmeans_plusplus(x: Tensor, n_clusters: int, *, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``n_clusters`` centers drawn from ``x``.

    The first center is uniform; each next one is drawn with probability proportional to the
    squared distance to the nearest center chosen so far. If all remaining points coincide
    with centers (degenerate data), the next center is drawn uniformly.

    Parameters
    ----------
    x : Tensor
        Data, shape ``(N, D)``, any float dtype and device.
    n_clusters : int
        Number of centers ``K <= N``.
    generator : torch.Generator
        Source of randomness (on the CPU); the result is a deterministic function of its state.

    Returns
    -------
    Tensor
        Centers, shape ``(K, D)``, dtype and device of ``x``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0]], dtype=torch.float64)
    >>> c = kmeans_plusplus(x, 2, generator=torch.Generator().manual_seed(0))
    >>> c.shape
    torch.Size([2, 2])
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    idx = [first]
    closest = _sq_dist(x, x[first : first + 1]).squeeze(-1)
    for _ in range(1, n_clusters):
        total = closest.sum()
        if total > 0:
            probs = (closest / total).cpu()
        else:
            probs = torch.full((n,), 1.0 / n, dtype=torch.float64)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        idx.append(nxt)
        closest = torch.minimum(closest, _sq_dist(x, x[nxt : nxt + 1]).squeeze(-1))
    return x[idx]


def initial_responsibilities(
    x: Tensor, n_components: int, *, method: str, generator: torch.Generator
) -> Tensor:
    """Initial responsibilities ``r`` of shape ``(N, K)`` whose rows sum to one.

    ``method="kmeans++"`` assigns each point to its nearest k-means++ seed (one-hot, as
    scikit-learn's ``init_params="k-means++"``); ``method="random"`` draws uniform weights and
    normalises each row (scikit-learn's ``"random"``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> r = initial_responsibilities(x, 2, method="random", generator=torch.Generator().manual_seed(1))
    >>> torch.allclose(r.sum(-1), torch.ones(5, dtype=torch.float64))
    True
    """
    n = x.shape[0]
    if method == "kmeans++":
        centers = kmeans_plusplus(x, n_components, generator=generator)
        nearest = _sq_dist(x, centers).argmin(-1)
        # scatter into the float array: one_hot(...).to(dtype) holds an int64 copy too
        return torch.zeros(n, n_components, dtype=x.dtype, device=x.device).scatter_(1, nearest[:, None], 1.0)
    if method == "random":
        r = torch.rand(n, n_components, generator=generator, dtype=torch.float64).to(x)
        return r / r.sum(-1, keepdim=True)
    raise ValueError(f"init must be 'kmeans++', 'random' or a responsibility tensor, got {method!r}")
