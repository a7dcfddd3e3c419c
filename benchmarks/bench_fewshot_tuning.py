"""Few-shot hyperparameter choice without peeking vs. tuning on a held-out validation set (issue 12, point 3).

For GDA and Tip-Adapter (both blended with a zero-shot prior) and the linear probe, on a synthetic
slide-embedding problem (``--classes`` overlapping Gaussian classes in a ``--dim``-d space, L2-normalised as
joint-space slide embeddings are; an imperfect zero-shot prior from noisy text directions), this prints the test
accuracy of

* ``auto``: ``slidescope.vlm.fewshot`` choosing on its own (leave-one-out on the support for GDA/Tip-Adapter,
  a held-out part of the support for the probe, the papers' defaults at 1 shot), and
* ``val``: the same method tuned on a separate labelled validation set (``--val-per-class`` slides per class),

averaged over ``--seeds`` draws per method and shot count, and whether ``auto >= val - 1 point``.

Run: ``uv run --locked python benchmarks/bench_fewshot_tuning.py [--seeds 20]`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from slidescope.vlm.fewshot import gda, linear_probe, tip_adapter


def draw(rng: np.random.Generator, means: np.ndarray, n_per_class: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    c, d = means.shape
    y = np.repeat(np.arange(c), n_per_class)
    # overlapping classes: isotropic noise plus a shared nuisance direction per slide (site/stain-like)
    x = means[y] + spread * rng.normal(size=(len(y), d)) / np.sqrt(d) + 0.5 * rng.normal(size=(len(y), 1)) * means[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def problem(seed: int, classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10_000 + seed)
    common = rng.normal(size=dim)
    means = common / np.linalg.norm(common) + 0.35 * rng.normal(size=(classes, dim)) / np.sqrt(dim)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    text = means + 0.35 * rng.normal(size=(classes, dim)) / np.sqrt(dim)  # imperfect zero-shot prompts
    return means, text / np.linalg.norm(text, axis=1, keepdims=True)


def prior(x: np.ndarray, text: np.ndarray, scale: float = 100.0) -> torch.Tensor:
    """Zero-shot log-probabilities, as ``few_shot`` feeds GDA / Tip-Adapter."""
    return torch.log_softmax(scale * torch.from_numpy(x) @ torch.from_numpy(text).T, dim=1)


def accuracy(model, x: np.ndarray, y: np.ndarray, zs: torch.Tensor | None) -> float:
    pred = model.predict(x, zero_shot_logits=zs) if getattr(model, "uses_zero_shot", False) else model.predict(x)
    return float((pred.numpy() == y).mean())


def run(method: str, shots: int, seed: int, args: argparse.Namespace) -> tuple[float, float, str]:
    means, text = problem(seed, args.classes, args.dim)
    rng = np.random.default_rng(seed)
    xs, ys = draw(rng, means, shots, args.spread)
    xv, yv = draw(rng, means, args.val_per_class, args.spread)
    xt, yt = draw(rng, means, args.test_per_class, args.spread)
    zs, zv, zt = prior(xs, text), prior(xv, text), prior(xt, text)
    if method == "gda":
        auto = gda(xs, ys, zs=zs)
        val = gda(xs, ys, zs=zs, X_val=xv, y_val=yv, zs_val=zv)
    elif method == "tip-adapter":
        auto = tip_adapter(xs, ys, zs=zs)
        val = tip_adapter(xs, ys, zs=zs, X_val=xv, y_val=yv, zs_val=zv)
    else:
        lambdas = [float(v) for v in np.logspace(-5, 6, args.lambdas)]
        auto = linear_probe(xs, ys, lambdas=lambdas, seed=seed)
        val = linear_probe(xs, ys, X_val=xv, y_val=yv, lambdas=lambdas)
    return accuracy(auto, xt, yt, zt), accuracy(val, xt, yt, zt), auto.tuning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--methods", nargs="+", default=["gda", "tip-adapter", "linear"])
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--spread", type=float, default=1.0, help="noise scale relative to the class separation")
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--lambdas", type=int, default=23, help="size of the probe's 1e-5..1e6 grid (TITAN: 45)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    zs_only = []
    for seed in range(args.seeds):
        means, text = problem(seed, args.classes, args.dim)
        xt, yt = draw(np.random.default_rng(seed), means, args.test_per_class, args.spread)
        zs_only.append(float((prior(xt, text).argmax(1).numpy() == yt).mean()))
    print(f"{args.classes} classes, {args.dim}-d, {args.seeds} seeds, {args.val_per_class} validation and "
          f"{args.test_per_class} test slides per class; zero-shot prior alone: {100 * np.mean(zs_only):.1f}%")
    print(f"{'method':<12} {'shots':>5} {'auto tuning':<14} {'auto %':>7} {'val %':>7} {'auto-val':>8}  ok")
    start = time.perf_counter()
    for method in args.methods:
        for shots in args.shots:
            res = [run(method, shots, seed, args) for seed in range(args.seeds)]
            a, v = 100 * np.mean([r[0] for r in res]), 100 * np.mean([r[1] for r in res])
            tunings = "/".join(sorted({r[2] for r in res}))
            ok = "yes" if a >= v - 1 else "NO"
            print(f"{method:<12} {shots:>5} {tunings:<14} {a:7.2f} {v:7.2f} {a - v:+8.2f}  {ok}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
