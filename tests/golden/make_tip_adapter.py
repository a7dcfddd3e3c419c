"""Golden file ``tip_adapter.npz``: gaopengcuhk/Tip-Adapter's hyperparameter search and prediction.

Run by hand, outside the package (never by pytest), against a checkout of the reference::

    uv venv /tmp/ref-fewshot && uv pip install --python /tmp/ref-fewshot/bin/python torch numpy
    git clone https://github.com/gaopengcuhk/Tip-Adapter /tmp/ref-src/tip  # commit d0e2d6f8c5fe...
    /tmp/ref-fewshot/bin/python tests/golden/make_tip_adapter.py /tmp/ref-src/tip

Reference functions called: ``utils.search_hp`` (the (beta, alpha) grid search on the validation set) and
``main.run_tip_adapter`` (search, then test-set scoring). ``run_tip_adapter`` reports accuracy only, so each
test slide's prediction is read by calling it on that one slide labelled with each class in turn (accuracy 100
for the predicted class). The CLIP / dataset modules the scripts import at the top are replaced by empty
stand-ins: the two functions never use them. Inputs are fixed small features: 3 classes x 4 shots, 16-d,
30 validation and 9 test slides, all L2-normalised as the reference's ``pre_load_features`` does; the zero-shot
logits are the reference's ``100 * features @ clip_weights``.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("tip_adapter.npz")
SEED = 2
SEARCH_SCALE, SEARCH_STEP, INIT = [7, 3], [200, 20], (1.0, 1.17)  # configs/imagenet.yaml


def fixed_inputs(seed: int = 12, c: int = 3, shots: int = 4, d: int = 16, n_val: int = 30, n_test: int = 9):
    """Class means on the sphere, noisy slides around them, noisy text directions (all float32, normalised)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(c), n // c)
        x = means[y] + 0.9 * rng.normal(size=(len(y), d)) / np.sqrt(d) * 2
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    support, y_support = draw(c * shots)
    val, y_val = draw(n_val)
    test, y_test = draw(n_test)
    common = rng.normal(size=d)  # CLIP-like: text directions share most of their direction
    text = common / np.linalg.norm(common) + 0.1 * (means + 1.5 * rng.normal(size=(c, d)) / np.sqrt(d) * 2)
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)  # (C, d)
    return support, y_support, val, y_val, test, y_test, text


def main(src: Path) -> None:
    sys.path.insert(0, str(src))
    for name in ("clip", "datasets", "datasets.utils"):  # imported at module top, unused by these functions
        sys.modules[name] = types.ModuleType(name)
    sys.modules["datasets"].build_dataset = None  # type: ignore[attr-defined]
    sys.modules["datasets.utils"].build_data_loader = None  # type: ignore[attr-defined]
    import main as tip_main  # noqa: E402  (the reference's main.py)
    import utils as tip_utils  # noqa: E402

    support, y_support, val, y_val, test, y_test, text = fixed_inputs(SEED)
    keys = torch.from_numpy(support).T.contiguous()  # (d, n), as build_cache_model's permute(1, 0)
    values = torch.nn.functional.one_hot(torch.from_numpy(y_support)).float()
    clip_weights = torch.from_numpy(text).T.contiguous()  # (d, C)
    cfg = {
        "search_hp": True,
        "search_scale": SEARCH_SCALE,
        "search_step": SEARCH_STEP,
        "init_beta": INIT[0],
        "init_alpha": INIT[1],
    }
    fv, lv = torch.from_numpy(val), torch.from_numpy(y_val)
    with contextlib.redirect_stdout(io.StringIO()):
        best_beta, best_alpha = tip_utils.search_hp(cfg, keys, values, fv, lv, clip_weights)
    preds = []
    for t in range(len(test)):
        hit = []
        for c in range(text.shape[0]):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                tip_main.run_tip_adapter(
                    cfg,
                    keys,
                    values,
                    fv,
                    lv,
                    torch.from_numpy(test[t : t + 1]),
                    torch.tensor([c]),
                    clip_weights,
                )
            acc = float(re.findall(r"Tip-Adapter's test accuracy: ([0-9]+\.[0-9]+)", buf.getvalue())[-1])
            hit.append(acc == 100.0)
        assert sum(hit) == 1
        preds.append(hit.index(True))
    commit = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    np.savez(
        OUT,
        support=support,
        y_support=y_support,
        val=val,
        y_val=y_val,
        test=test,
        y_test=y_test,
        text=text,
        best_beta=best_beta,
        best_alpha=best_alpha,
        test_pred=np.array(preds),
        search_scale=np.array(SEARCH_SCALE, float),
        search_step=np.array(SEARCH_STEP),
        provenance=np.array(
            f"gaopengcuhk/Tip-Adapter@{commit or 'd0e2d6f8c5feb8b6ce937b757810761f7155d4d5'}; "
            "utils.search_hp (cfg: configs/imagenet.yaml search_scale/search_step) and "
            "main.run_tip_adapter per test slide; tests/golden/make_tip_adapter.py"
        ),
    )
    print(f"beta={best_beta:.4f} alpha={best_alpha:.4f} preds={preds} -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
