"""Golden file ``gda.npz``: mrflogs/ICLR24's training-free GDA (Wang et al., ICLR 2024), alpha search and predictions.

Run by hand, outside the package (never by pytest), against a checkout of the reference::

    uv venv /tmp/ref-fewshot && uv pip install --python /tmp/ref-fewshot/bin/python torch "numpy<2" \
        scikit-learn torchvision tqdm pyyaml
    git clone https://github.com/mrflogs/ICLR24 /tmp/ref-src/gda  # commit 560fe211700964c9...
    /tmp/ref-fewshot/bin/python tests/golden/make_gda.py /tmp/ref-src/gda

Reference function called: ``main_few_shots.run(cfg, train_loader_cache, clip_weights, clip_model)``: it
estimates the class means and the KS-shrunk precision from the support, searches ``alpha`` on the validation
features (module globals ``val_features``/``val_labels``) and reports the test accuracy. Stand-ins: the CLIP
image encoder is the identity on the fixed features (``run`` L2-normalises them as it does images' features),
the loader is one batch, ``augment_epoch=1`` (slide embeddings have no augmented views), ``.cuda()`` is a no-op
on CPU, and the CLIP / dataset modules imported at the script's top are empty (``run`` does not use them).
``run`` returns accuracy only, so each test slide's prediction is read by running it on that one slide labelled
with each class in turn. The chosen alpha is parsed from its ``best_val_alpha`` print. Inputs: the fixed
features of ``make_tip_adapter.py`` (3 classes x 4 shots, 16-d; 30 validation, 9 test slides), float32.
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

sys.path.insert(0, str(Path(__file__).parent))
from make_tip_adapter import SEED, fixed_inputs  # noqa: E402

OUT = Path(__file__).with_name("gda.npz")


def main(src: Path) -> None:
    sys.path.insert(0, str(src))
    stubs = ("clip", "clip.simple_tokenizer", "datasets", "datasets.imagenet", "datasets.utils")
    for name in stubs:  # imported at the script's top, unused by run()
        sys.modules[name] = types.ModuleType(name)
    sys.modules["clip.simple_tokenizer"].SimpleTokenizer = object  # type: ignore[attr-defined]
    sys.modules["datasets.imagenet"].ImageNet = None  # type: ignore[attr-defined]
    sys.modules["datasets"].build_dataset = None  # type: ignore[attr-defined]
    sys.modules["datasets.utils"].build_data_loader = None  # type: ignore[attr-defined]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    import main_few_shots as ref  # noqa: E402

    support, y_support, val, y_val, test, y_test, text = fixed_inputs(SEED)
    clip_model = types.SimpleNamespace(encode_image=lambda x: x.clone())
    loader = [(torch.from_numpy(support), torch.from_numpy(y_support))]
    clip_weights = torch.from_numpy(text).T.contiguous()  # (d, C)
    cfg = {"augment_epoch": 1}
    ref.val_features, ref.val_labels = torch.from_numpy(val), torch.from_numpy(y_val)

    def call(test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, float]:
        ref.test_features, ref.test_labels = torch.from_numpy(test_x), torch.from_numpy(test_y)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            acc = ref.run(cfg, loader, clip_weights, clip_model)
        alpha = float(re.findall(r"best_val_alpha: ([0-9.e+-]+)", buf.getvalue())[-1])
        return float(acc), alpha

    test_acc, alpha = call(test, y_test)
    preds = []
    for t in range(len(test)):
        hit = [call(test[t : t + 1], np.array([c]))[0] == 100.0 for c in range(text.shape[0])]
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
        best_alpha=alpha,
        test_acc=test_acc,
        test_pred=np.array(preds),
        provenance=np.array(
            f"mrflogs/ICLR24@{commit or '560fe211700964c915442ff98dbe47dd09656a35'}; "
            "main_few_shots.run (KS estimator, alpha grid on val) per test slide; "
            "tests/golden/make_gda.py"
        ),
    )
    print(f"alpha={alpha} acc={test_acc:.2f} preds={preds} -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
