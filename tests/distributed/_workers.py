"""What each rank runs in the distributed tests, and the data both sides build.

The functions named ``*_suite`` run inside :func:`pyro_vi.distributed.spawn` (an initialised
gloo group on 127.0.0.1) and return plain numbers and NumPy arrays; the tests compare them
with single-process fits on the concatenated rows, which they compute themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist

from pyro_vi import cavi, fit_svi, svi_cavi
from pyro_vi.cavi.engine import param_tensors
from pyro_vi.cavi.model import ConjugateModel
from pyro_vi.distributed import shard
from pyro_vi.errors import NumericalError
from pyro_vi.models.gamma_poisson import GammaPoisson
from pyro_vi.models.gmm.model import GaussianMixture
from pyro_vi.models.hierarchical import HierarchicalNormal
from pyro_vi.models.linreg import BayesianLinearRegression
from pyro_vi.models.normal import UnivariateNormal

F64 = torch.float64
N_GMM = 301  # uneven over 2 (151, 150) and 3 (101, 100, 100) ranks
SWEEPS = 25  # fixed sweeps (tol=0): the single-process reference takes the same trajectory


def mixture(n: int = N_GMM, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]], dtype=F64)
    z = torch.randint(3, (n,), generator=g)
    return centres[z] + torch.randn(n, 2, generator=g, dtype=F64)


def responsibilities(n: int = N_GMM, k: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g, dtype=F64), -1)


def counts(n: int = 101) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.poisson(torch.full((n,), 3.5, dtype=F64), generator=g)


def groups(j: int = 50, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sigma = 1 + 4 * torch.rand(j, generator=g, dtype=F64)
    theta = 3 + 2 * torch.randn(j, generator=g, dtype=F64)
    return theta + sigma * torch.randn(j, generator=g, dtype=F64), sigma


def regression(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    return x, x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.3 * torch.randn(n, generator=g, dtype=F64)


def normal_data(n: int = 80) -> torch.Tensor:
    return 5.0 + 2.0 * torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=F64)


def pyro_poisson(x):
    """A plain Pyro model: automatic CAVI derives its conjugate updates (issue 14)."""
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(0.5, dtype=F64)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Poisson(rate), obs=x)


def pyro_poisson_mixture(x):
    """A plain Pyro mixture (an enumerated discrete latent): derived with a random start."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((2,), 0.5, dtype=F64)))
    with pyro.plate("components", 2):
        rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(0.5, dtype=F64)))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Poisson(rate[z]), obs=x)


def mixed_counts(n: int = 201) -> torch.Tensor:
    g = torch.Generator().manual_seed(6)
    rates = torch.where(torch.rand(n, generator=g) < 0.4, 2.0, 12.0).to(F64)
    return torch.poisson(rates, generator=g)


def derived_cases() -> dict[str, tuple[object, torch.Tensor, dict]]:
    """Case name -> (plain Pyro model, full data, cavi options that are per row)."""
    return {"derived_poisson": (pyro_poisson, counts(), {}),
            "derived_mixture": (pyro_poisson_mixture, mixed_counts(),
                                {"init": responsibilities(201, 2, seed=9)})}


def equality_cases() -> dict[str, tuple[ConjugateModel, object]]:
    """Case name -> (model, full data); each fit with seed 0, SWEEPS sweeps, tol 0."""
    x, r = mixture(), responsibilities()
    return {
        "gmm_full": (GaussianMixture(3, init=r), x),
        "gmm_diag": (GaussianMixture(3, covariance="diag", init=r), x),
        "gamma_poisson": (GammaPoisson(concentration=2.0, rate=0.5), counts()),
        "hierarchical": (HierarchicalNormal(mean_prior=0.0, mean_scale=10.0,
                                            precision_concentration=1.0, precision_rate=1.0),
                         groups()),
        "linreg": (BayesianLinearRegression(), regression()),
        "normal": (UnivariateNormal(), normal_data()),
    }


def _shard_model(model: ConjugateModel, rank: int, world: int) -> ConjugateModel:
    """The GMM's tensor start is per row: each rank gets its rows of it."""
    if isinstance(model, GaussianMixture) and isinstance(model.init, torch.Tensor):
        copy = GaussianMixture.__new__(GaussianMixture)
        copy.__dict__.update(model.__dict__)
        copy.init = shard(model.init, rank=rank, world_size=world)
        return copy
    return model


def summary(fit) -> dict:
    return {"params": [t.numpy().copy() for t in param_tensors(fit.params)],
            "elbo": fit.elbo, "n_steps": fit.n_steps,
            "history": fit.history["elbo"].to_numpy().copy()}


class FailingPoisson(GammaPoisson):
    """Raises a NumericalError in rank 1's second local step (sweep 1)."""

    calls = 0

    def local_step(self, data, params):
        FailingPoisson.calls += 1
        if tdist.get_rank() == 1 and FailingPoisson.calls == 2:
            raise NumericalError("injected failure in the local step")
        return super().local_step(data, params)


class LocalOriginNormal(UnivariateNormal):
    """A model whose prepare_shard forgot its data-dependent origin (the contract's default)."""

    def prepare_shard(self, data, *, comm):
        return self.prepare(data)


class WrongNormal(UnivariateNormal):
    """A wrong global step from sweep 3 on (the precision's rate tripled): the ELBO falls."""

    calls = 0

    def global_step(self, stats, params):
        WrongNormal.calls += 1
        out = super().global_step(stats, params)
        if WrongNormal.calls >= 3:
            out = type(out)(out.loc, type(out.precision)(out.precision.concentration,
                                                         3.0 * out.precision.rate))
        return out


def _error(fn) -> tuple[str, str] | None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test compares what each rank raised
        return type(err).__name__, str(err)
    return None


def conjugate_suite() -> dict:
    """Every CAVI / stochastic-VI case on this rank (one spawn per world size)."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    out: dict = {}
    for name, (model, data) in equality_cases().items():
        fit = cavi(_shard_model(model, rank, world), shard(data, rank=rank, world_size=world),
                   max_iter=SWEEPS, tol=0.0, warn=False, distributed=True)
        out[name] = summary(fit)
    for name, (pyro_model, data, opts) in derived_cases().items():
        mine = {k: shard(v, rank=rank, world_size=world) for k, v in opts.items()}
        fit = cavi(pyro_model, shard(data, rank=rank, world_size=world), max_iter=SWEEPS, tol=0.0,
                   warn=False, distributed=True, **mine)
        out[name] = summary(fit)
    out["derived_mixture_kmeanspp"] = summary(cavi(
        pyro_poisson_mixture, shard(mixed_counts(), rank=rank, world_size=world), seed=0,
        max_iter=SWEEPS, tol=0.0, warn=False, distributed=True))
    # the seeded k-means++ start from a subsample of all rows: the same for any world size
    x = mixture()
    out["gmm_kmeanspp"] = summary(cavi(GaussianMixture(3), shard(x, rank=rank, world_size=world),
                                       seed=0, max_iter=SWEEPS, tol=0.0, warn=False,
                                       distributed=True))
    # restarts and convergence: every rank takes the same decisions as one process
    fit = cavi(GaussianMixture(3), shard(x, rank=rank, world_size=world), seed=0, n_init=3,
               distributed=True)
    out["gmm_restarts"] = summary(fit)
    out["gmm_restart_elbos"] = [run.elbo for run in fit.runs]
    out["wrong_update"] = _error(lambda: cavi(WrongNormal(), shard(normal_data(), rank=rank,
                                                                   world_size=world),
                                              distributed=True))
    # uneven shards: 10 rows on rank 0, the rest spread; with 3 ranks also a rank without rows
    cut = [0, 10] + [10 + (N_GMM - 10) * (i + 1) // (world - 1) for i in range(world - 1)]
    mine = slice(cut[rank], cut[rank + 1])
    r = responsibilities()
    out["gmm_uneven"] = summary(cavi(GaussianMixture(3, init=r[mine]), x[mine], max_iter=SWEEPS,
                                     tol=0.0, warn=False, distributed=True))
    out["uneven_cut"] = cut
    if world >= 3:
        empty = slice(0, 0) if rank == 1 else (slice(0, 150) if rank == 0 else slice(150, N_GMM))
        out["zero_rows"] = _error(lambda: cavi(GaussianMixture(3), x[empty], distributed=True))
        out["zero_rows_svi_cavi"] = _error(lambda: svi_cavi(GaussianMixture(3), x[empty],
                                                            batch_size=50, distributed=True))
    # an error on one rank is raised on every rank, and the group stays usable afterwards
    bad = shard(x, rank=rank, world_size=world).clone()
    if rank == 1:
        bad[3, 1] = float("nan")
    out["nan_shard"] = _error(lambda: cavi(GaussianMixture(3), bad, distributed=True))
    out["local_step_error"] = _error(lambda: cavi(
        FailingPoisson(), shard(counts(), rank=rank, world_size=world), distributed=True))
    out["forgotten_override"] = _error(lambda: cavi(
        LocalOriginNormal(), shard(normal_data(), rank=rank, world_size=world), distributed=True))
    # stochastic VI: each rank its own minibatches of 250 rows from its shard
    big = mixture(6000, seed=7)
    fit = svi_cavi(GaussianMixture(3, init="kmeans"), shard(big, rank=rank, world_size=world),
                   batch_size=500 // world, num_epochs=3, seed=0, distributed=True)
    out["svi_cavi_gmm"] = summary(fit)
    # whole shards as minibatches: the global batch is every row, so N / |B| = 1 exactly
    fit = svi_cavi(GammaPoisson(), shard(counts(), rank=rank, world_size=world),
                   batch_size=10**6, max_steps=5, seed=0, distributed=True)
    out["svi_cavi_full_batch"] = summary(fit)
    y, sigma = groups(2000, seed=8)
    fit = svi_cavi(HierarchicalNormal(mean_prior=0.0, mean_scale=10.0, precision_concentration=1.0,
                                      precision_rate=1.0),
                   shard((y, sigma), rank=rank, world_size=world), batch_size=100 // world,
                   num_epochs=5, seed=0, distributed=True)
    out["svi_cavi_hier"] = summary(fit)
    out["after_errors"] = float(cavi(GammaPoisson(), shard(counts(), rank=rank, world_size=world),
                                     distributed=True).elbo)
    return out


# ------------------------------------------------------------------------------------- SVI
PRIOR_LOC, PRIOR_SD, LIK_SD = 1.0, 3.0, 1.5
N_SVI = 40


def svi_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N_SVI, generator=g) * LIK_SD + 2.0


def posterior(x: torch.Tensor) -> tuple[float, float]:
    """Exact posterior N(mean, sd^2) of the normal mean (Murphy 2007, eq. 20)."""
    prec = 1 / PRIOR_SD**2 + len(x) / LIK_SD**2
    return (PRIOR_LOC / PRIOR_SD**2 + float(x.sum()) / LIK_SD**2) / prec, prec**-0.5


def model(x):
    """The normal mean; the plate has the global size, each rank's rows are its subsample."""
    mu = pyro.sample("mu", dist.Normal(PRIOR_LOC, PRIOR_SD))
    with pyro.plate("data", N_SVI, subsample_size=len(x)):
        pyro.sample("x", dist.Normal(mu, LIK_SD), obs=x)


def guide(x):
    loc = pyro.param("loc", lambda: torch.randn(()))  # random: rank 0's start is broadcast
    scale = pyro.param("scale", lambda: torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def local_plate_model(x):
    """The mistake Pyro's Horovod example warns about: the plate sized by the rank's rows."""
    mu = pyro.sample("mu", dist.Normal(PRIOR_LOC, PRIOR_SD))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, LIK_SD), obs=x)


class BrokenBatches(list):
    """Rank 1's third batch cannot be read."""

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i == 2 and tdist.get_rank() == 1:
                raise OSError("batch 3 is unreadable")
            yield batch


def _svi(x, steps, **kw):
    pyro.clear_param_store()
    kw.setdefault("progress", False)
    return fit_svi(model, guide, x, num_steps=steps, seed=0, tol=0.0,
                   optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}), distributed=True,
                   **kw)


def _svi_summary(fit) -> dict:
    return {"params": {k: v.numpy().copy() for k, v in fit.params.items()},
            "loss": fit.history["loss"].to_numpy().copy(), "n_steps": fit.n_steps,
            "history": fit.history.copy(),
            "stop_reason": fit.stop_reason}


def two_rank_suite(folder: str, steps: int) -> dict:
    """The conjugate suite and the SVI resume in one spawn of 2 ranks (process start-up is
    most of a spawn's cost on a small machine)."""
    return {**conjugate_suite(), **svi_suite(folder, steps, None), "ddp": ddp_gradients()}


def svi_suite(folder: str, steps: int, kill_at: int | None) -> dict:
    """A checkpointed run (rank 1 killed at ``kill_at``), or: resume it, and an unbroken run."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    x = shard(svi_data(), rank=rank, world_size=world)
    path = os.path.join(folder, "fit.pt")
    if kill_at is not None:
        def die(step, loss):
            if rank == 1 and step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        _svi(x, steps, checkpoint=path, checkpoint_every=20, callback=die)
        return {}
    out = {"resumed": _svi_summary(_svi(x, steps, checkpoint=path, resume=True))}
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown):  # the progress bar: rank 0's only
        unbroken = _svi(x, steps, checkpoint=os.path.join(folder, f"unbroken-{rank}.pt"),
                        progress=True)
    out["unbroken"] = _svi_summary(unbroken)
    out["progress_chars"] = len(shown.getvalue())
    out["files"] = sorted(os.listdir(folder))
    out["batch_error"] = _error(lambda: fit_svi(
        model, guide, batches=BrokenBatches([x[:5], x[5:10], x[10:15], x[15:]]), num_steps=6,
        progress=False, distributed=True))
    bad = x.clone()
    if rank == 1:
        bad[2] = float("nan")
    out["nan_data"] = _error(lambda: fit_svi(model, guide, bad, num_steps=3, progress=False,
                                             distributed=True))
    cut = 25 if rank == 0 else 15  # uneven shards: the plates' full size is 40 on both
    mine = svi_data()[:25] if rank == 0 else svi_data()[25:]
    assert len(mine) == cut
    out["uneven"] = _error(lambda: _svi(mine, 3))
    out["empty_rank"] = _error(lambda: _svi(svi_data()[:0] if rank == 1 else svi_data(), 3))
    out["plate_error"] = _error(lambda: fit_svi(
        local_plate_model, guide, x[: 5 + 3 * rank], num_steps=2, progress=False,
        distributed=True))
    return out


# ---------------------------------------------------------------------------------- launch
def rank_and_world(tag: str) -> tuple[str, int, int, int]:
    """Rank 1 raises; the others return what they see."""
    if tdist.get_rank() == 1:
        raise KeyError("only rank 1 fails")
    return tag, tdist.get_rank(), tdist.get_world_size(), torch.get_num_threads()


def wait_forever() -> None:
    tdist.barrier() if tdist.get_rank() == 0 else __import__("time").sleep(60)


def nccl_gmm() -> dict:
    """The GMM on CUDA tensors: the group's backend is NCCL, the statistics cross on the GPU."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    dev = torch.device("cuda", torch.cuda.current_device())
    x, r = mixture(), responsibilities()
    fit = cavi(GaussianMixture(3, init=shard(r, rank=rank, world_size=world).to(dev), device=dev),
               shard(x, rank=rank, world_size=world).to(dev), max_iter=SWEEPS, tol=0.0,
               warn=False, distributed=True)
    return {"backend": str(tdist.get_backend()), "elbo": fit.elbo,
            "params": [t.cpu().numpy().copy() for t in param_tensors(fit.params)]}


def ddp_gradients() -> dict:
    """One gradient by Pyro's own route (ELBOModule wrapped in DDP) and by fit_svi's.

    Pyro's ``examples/svi_lightning.py`` route: ``module_local_params=True``, an AutoNormal
    guide, ``Trace_ELBO()(model, guide)`` an ``nn.Module`` that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps. fit_svi's route:
    :class:`~pyro_vi.distributed.gradients.AveragedELBO` on the global param store, from the
    same parameter values and the same random draws on each rank.
    """
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from torch.nn.parallel import DistributedDataParallel

    from pyro_vi.distributed import Comm
    from pyro_vi.distributed.gradients import AveragedELBO

    rank, world = tdist.get_rank(), tdist.get_world_size()
    x = shard(svi_data(), rank=rank, world_size=world)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(rank)  # different starts: DDP broadcasts rank 0's
        guide_m = AutoNormal(model)
        elbo = Trace_ELBO()(model, guide_m)
        elbo(x)  # creates the guide's parameters
        ddp = DistributedDataParallel(elbo)
        pyro.set_rng_seed(100 + rank)
        ddp(x).backward()
        loc = guide_m.locs.mu.detach().clone()
        scale = guide_m.scales.mu.detach().clone()
        ddp_grads = {n.replace("_unconstrained", ""): p.grad.clone()
                     for n, p in guide_m.named_parameters()}
    pyro.clear_param_store()
    guide_g = AutoNormal(model)
    guide_g(x)
    store = pyro.get_param_store()
    store["AutoNormal.locs.mu"] = loc
    store["AutoNormal.scales.mu"] = scale
    grads = {}
    for name, elbo_fn in (("local", Trace_ELBO()), ("ours", AveragedELBO(Trace_ELBO(), Comm()))):
        for _, p in store.named_parameters():  # the unconstrained leaves
            p.grad = None
        pyro.set_rng_seed(100 + rank)
        elbo_fn.loss_and_grads(model, guide_g, x)
        grads[name] = {n.split(".", 1)[1]: store._params[n].grad.clone().numpy()
                       for n in store.keys()}
    return {"ddp": {k: v.numpy() for k, v in ddp_grads.items()}, **grads}
