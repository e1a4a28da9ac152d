"""``pyro-vi vae``: train a VAE on digits or MNIST, evaluate it, write figures and metrics.

Example: ``pyro-vi vae --data digits --epochs 50 --latent-dim 2 --out vae-run``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pyro_vi._io import check_writable, write_csv, write_text
from pyro_vi.data.images import ImageData, load_digits, load_mnist
from pyro_vi.models.vae.evaluate import elbo_per_image, iw_log_likelihood
from pyro_vi.models.vae.model import VAE, VAEConfig, save_vae
from pyro_vi.models.vae.plots import (
    plot_elbo_curves,
    plot_latent_space,
    plot_prior_samples,
    plot_reconstructions,
)
from pyro_vi.models.vae.train import fit_vae

__all__ = ["build_parser", "main", "metrics_table"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "none"):
        return ()
    return tuple(_positive_int(t) for t in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    """Return the ``pyro-vi vae`` argument parser."""
    from pyro_vi.cli.main import HelpFormatter, plain

    p = argparse.ArgumentParser(prog="pyro-vi vae", description=plain(__doc__.splitlines()[0]),
                                formatter_class=HelpFormatter)
    p.add_argument("--data", choices=("digits", "mnist"), default="digits",
                   help="digits: scikit-learn's 8x8 (offline); mnist: downloaded and cached")
    p.add_argument("--epochs", type=_positive_int, default=50)
    p.add_argument("--latent-dim", type=_positive_int, default=2)
    p.add_argument("--hidden", type=_hidden, default=(256, 128),
                   help="comma-separated hidden widths of the encoder (default 256,128)")
    p.add_argument("--batch-size", type=_positive_int, default=100)
    p.add_argument("--elbo", choices=("trace", "iwae"), default="trace",
                   help="training objective: Trace_ELBO, or RenyiELBO(alpha=0) = IWAE")
    p.add_argument("--k", type=_positive_int, default=1,
                   help="particles per image for the training objective")
    p.add_argument("--eval-k", type=_positive_int, default=5000,
                   help="particles for the test IW log-likelihood (5000 in Burda et al.)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="seeds weights, split and training")
    p.add_argument("--out", type=Path, default=Path("vae-out"), help="output directory")
    p.add_argument("--cache", type=Path, default=None, help="MNIST download cache directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def metrics_table(rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
    """Metrics as a frame with columns ``metric``, ``value``, ``mc_stderr``, ``note``."""
    return pd.DataFrame(rows, columns=["metric", "value", "mc_stderr", "note"])


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body]) + "\n"


def _load(args: argparse.Namespace) -> ImageData:
    if args.data == "digits":
        return load_digits(seed=args.seed)
    return load_mnist(cache=args.cache)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vi vae``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.lr > 0 or not math.isfinite(args.lr):
        parser.error(f"argument --lr: must be a finite number > 0, got {args.lr}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        check_writable(args.out / "metrics.csv", what="--out")
    except (OSError, ValueError) as err:  # before any training
        parser.error(str(err))
    data = _load(args)
    config = VAEConfig(input_dim=data.x_train.shape[1], latent_dim=args.latent_dim,
                       hidden=args.hidden, seed=args.seed)
    vae = VAE(config)
    x_test = vae.prepare(data.x_test, name="x_test")  # checks the data before any training
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"training a VAE on {data.name}: {len(data.x_train)} train / {len(data.x_test)} "
          f"test images, latent_dim={config.latent_dim}, hidden={config.hidden}, "
          f"{args.elbo} objective with k={args.k}", file=sys.stderr)
    fit = fit_vae(vae, data.x_train, x_test=data.x_test, epochs=args.epochs,
                  batch_size=args.batch_size, elbo=args.elbo, num_particles=args.k, lr=args.lr,
                  seed=args.seed, progress=not args.no_progress)
    t0 = time.perf_counter()
    elbo = elbo_per_image(vae, x_test, num_particles=100, seed=args.seed + 1)
    iw = iw_log_likelihood(vae, x_test, k=args.eval_k, seed=args.seed + 2)
    eval_seconds = time.perf_counter() - t0
    last = fit.curves.iloc[-1]
    table = metrics_table([
        ("test ELBO per image (nats)", elbo.value, elbo.mc_stderr, "100 particles"),
        ("test log p(x) IW estimate (nats)", iw.value, iw.mc_stderr, f"k={args.eval_k}"),
        ("gap IW - ELBO (nats)", iw.value - elbo.value, math.hypot(elbo.mc_stderr,
                                                                   iw.mc_stderr),
         "estimates the mean KL from q to the posterior"),
        ("train objective per image, last epoch (nats)", float(last["train_elbo"]), math.nan,
         f"{args.elbo}, minibatch estimates"),
        ("epochs", float(args.epochs), math.nan, f"batch size {args.batch_size}"),
        ("train images/second (median epoch)",
         float(fit.curves["images_per_second"].median()), math.nan, "evaluation excluded"),
        ("evaluation seconds", eval_seconds, math.nan, ""),
    ])
    paths = {
        "metrics (CSV)": out / "metrics.csv",
        "metrics (Markdown)": out / "metrics.md",
        "ELBO curves (CSV)": out / "curves.csv",
    }
    write_csv(table, paths["metrics (CSV)"], index=False)
    write_text(paths["metrics (Markdown)"], _markdown(table))
    write_csv(fit.curves, paths["ELBO curves (CSV)"], index=False)
    shape = data.image_shape
    paths["reconstructions"] = plot_reconstructions(vae, x_test, out / "reconstructions.png",
                                                    image_shape=shape)
    paths["prior samples"] = plot_prior_samples(vae, out / "prior_samples.png",
                                                image_shape=shape, seed=args.seed)
    paths["latent space"] = plot_latent_space(vae, x_test, data.y_test, out / "latent_space.png")
    paths["ELBO curves"] = plot_elbo_curves(fit.curves, out / "elbo_curves.png")
    paths["model"] = save_vae(out / "vae.pt", vae, data=data.name, split_seed=data.split_seed,
                              extra={"metrics": table.set_index("metric")["value"].to_dict()})
    print(_markdown(table))
    width = max(len(k) for k in paths)
    for what, path in paths.items():
        print(f"{what:<{width}}  {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
