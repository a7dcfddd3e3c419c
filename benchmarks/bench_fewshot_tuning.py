"""Few-shot hyperparameter choice without peeking vs. tuning on a held-out validation set (issue 12, point 3).

For GDA and Tip-Adapter (both blended with a zero-shot prior) and the linear probe, on a synthetic
slide-embedding problem (``--classes`` overlapping Gaussian classes in a ``--dim``-d space, L2-normalised as
joint-space slide embeddings are; an imperfect zero-shot prior from noisy text directions), this prints the test
accuracy of

* ``auto``: ``slidescope.vlm.fewshot`` choosing on its own (leave-one-out on the support for GDA/Tip-Adapter,
  repeated stratified cross-validation on the support for the probe, the papers' defaults at 1 shot), and
* ``val``: the same method tuned on a separate labelled validation set (``--val-per-class`` slides per class),

averaged over ``--seeds`` draws per method and shot count, and whether ``auto >= val - 1 point``.

Run: ``uv run --locked python benchmarks/bench_fewshot_tuning.py [--seeds 20]`` (a few minutes on 2 cores).

``--cohort hard`` runs the same comparison on the hard synthetic cohort of ``benchmarks/bench_hard_cohort.py``
(cohort seed ``--cohort-seed``, 96 slides, observed labels with 8 % noise), through the public
:func:`slidescope.vlm.api.few_shot`: slide embeddings are the joint-space embeddings of the slide-text model
that ``bench_hard_cohort.slide_text_model`` pretrains on a separate development cohort (its own tile pool,
patients and reports), GDA and Tip-Adapter blend in its zero-shot prior (``bench_hard_cohort.PROMPTS``), the
linear probe uses the same embeddings without a prior. Each of the ``--seeds`` draws per cell takes k support
slides per class, ``--val-per-class`` validation slides per class (used only by ``val``) and scores the
remaining slides; accuracy is against the observed labels. The tile pools and the model are cached in
``--out`` (shared with ``bench_hard_cohort.py``)::

    uv run --locked python benchmarks/bench_fewshot_tuning.py --cohort hard --out /tmp/hard
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from slidescope.vlm.fewshot import gda, linear_probe, tip_adapter


def draw(
    rng: np.random.Generator, means: np.ndarray, n_per_class: int, spread: float
) -> tuple[np.ndarray, np.ndarray]:
    c, d = means.shape
    y = np.repeat(np.arange(c), n_per_class)
    # overlapping classes: isotropic noise plus a shared nuisance direction per slide (site/stain-like)
    x = (
        means[y]
        + spread * rng.normal(size=(len(y), d)) / np.sqrt(d)
        + 0.5 * rng.normal(size=(len(y), 1)) * means[0]
    )
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
    pred = (
        model.predict(x, zero_shot_logits=zs) if getattr(model, "uses_zero_shot", False) else model.predict(x)
    )
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


def run_hard(args: argparse.Namespace) -> None:
    """The same comparison on the hard synthetic cohort (``benchmarks/bench_hard_cohort.py``), through
    :func:`slidescope.vlm.api.few_shot` on the slide-text model's joint-space embeddings."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_hard_cohort as hard

    from slidescope.vlm.api import few_shot

    s = hard.FULL
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = hard.make_cohort(hard.tile_pool(s, args.pool_seed, args.out), s, args.cohort_seed, args.out)
    model_dir, facts = hard.slide_text_model(s, args.cohort_seed, args.pool_seed, args.out)
    net, X, p_tumour = hard.joint_space(model_dir, rows, args.out)
    labels = np.array([r["label"] for r in rows])
    print(
        f"hard cohort seed {args.cohort_seed}: {len(rows)} slides ({(labels == 'tumour').sum()} labelled tumour, "
        f"observed labels with 8 % noise); slide-text model {'reused' if facts['reused'] else 'pretrained'} on "
        f"{facts['slides']} development slides ({time.perf_counter() - t0:.0f} s)"
    )
    zs_acc = float(((p_tumour >= 0.5) == (labels == "tumour")).mean())
    print(
        f"{args.seeds} draws per cell of k support, {args.val_per_class} validation slides per class and the "
        f"rest as test slides; zero-shot prior alone: {100 * zs_acc:.1f}% on all slides"
    )
    print(f"{'method':<12} {'shots':>5} {'auto tuning':<14} {'auto %':>7} {'val %':>7} {'auto-val':>8}  ok")
    method = {"gda": "gda", "tip-adapter": "tip-adapter", "linear": "linear"}
    start, all_ok = time.perf_counter(), True
    for m in args.methods:
        for k in args.shots:
            res = []
            for d in range(args.seeds):
                rng = np.random.default_rng([args.cohort_seed, k, d, 7])
                sup, val = [], []
                for c in ("normal", "tumour"):
                    idx = rng.permutation(np.flatnonzero(labels == c))
                    sup.append(idx[:k])
                    val.append(idx[k : k + args.val_per_class])
                sup, val = np.concatenate(sup), np.concatenate(val)
                test = np.setdiff1d(np.arange(len(rows)), np.concatenate([sup, val]))
                common = dict(
                    model=net, encoder="he-descriptor", method=method[m], classes=hard.PROMPTS, seed=d
                )
                auto = few_shot(X[sup], list(labels[sup]), X[test], **common)
                tuned = few_shot(
                    X[sup],
                    list(labels[sup]),
                    X[test],
                    val_stores=X[val],
                    val_labels=list(labels[val]),
                    **common,
                )
                acc = [
                    float((np.array(r.class_names)[r.probs.argmax(1).numpy()] == labels[test]).mean())
                    for r in (auto, tuned)
                ]
                res.append((*acc, auto.tuning))
            a, v = 100 * np.mean([r[0] for r in res]), 100 * np.mean([r[1] for r in res])
            tunings = "/".join(sorted({r[2] for r in res}))
            ok = a >= v - 1
            all_ok &= ok
            print(
                f"{m:<12} {k:>5} {tunings:<14} {a:7.2f} {v:7.2f} {a - v:+8.2f}  {'yes' if ok else 'NO'}",
                flush=True,
            )
    print(
        f"every cell auto >= val - 1 point: {'yes' if all_ok else 'NO'} ({time.perf_counter() - start:.0f} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cohort",
        choices=("gaussian", "hard"),
        default="gaussian",
        help="'gaussian': the synthetic Gaussian problem; 'hard': the hard synthetic cohort",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "slidescope-bench-hard",
        help="(hard) working folder of bench_hard_cohort.py (tile pools and models are cached there)",
    )
    ap.add_argument("--cohort-seed", type=int, default=0, help="(hard) seed of the evaluated cohort")
    ap.add_argument("--pool-seed", type=int, default=0, help="(hard) seed of the rendered tile pool")
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
    if args.cohort == "hard":
        import logging
        import warnings

        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        run_hard(args)
        return
    zs_only = []
    for seed in range(args.seeds):
        means, text = problem(seed, args.classes, args.dim)
        xt, yt = draw(np.random.default_rng(seed), means, args.test_per_class, args.spread)
        zs_only.append(float((prior(xt, text).argmax(1).numpy() == yt).mean()))
    print(
        f"{args.classes} classes, {args.dim}-d, {args.seeds} seeds, {args.val_per_class} validation and "
        f"{args.test_per_class} test slides per class; zero-shot prior alone: {100 * np.mean(zs_only):.1f}%"
    )
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
