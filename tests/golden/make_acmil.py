"""Golden outputs of the reference ACMIL (dazhangyu123/ACMIL) for ``tests/mil/test_parity_acmil.py``.

Run by hand, outside slidescope, against an exported checkout of the reference::

    git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/ref-src-acmil   # MIRROR: a clone of dazhangyu123/ACMIL
    uv venv /tmp/ref && uv pip install --python /tmp/ref/bin/python torch numpy einops
    /tmp/ref/bin/python tests/golden/make_acmil.py /tmp/ref-src-acmil --commit $(git --git-dir=MIRROR rev-parse HEAD)

It builds the reference's ``architecture.transformer.ACMIL_GA`` (``D_feat`` 16, ``D_inner`` 8, 2 classes,
fixed seed) in two settings of the README: ACMIL (``n_token`` 5, ``n_masked_patch`` 10, ``mask_drop`` 0.6)
and the one-token baseline (``n_token`` 1, ``n_masked_patch`` 0), runs one bag of 37 tiles with label 1 in
training mode (the instance masking draws ``torch.rand`` right after ``torch.manual_seed(seed)``; the seed is
stored) and in eval mode, and computes the loss of ``train_one_epoch`` in ``Step3_WSI_classification_ACMIL.py``
(branch CE only when ``n_token > 1``, slide CE, mean pairwise cosine of the branch attentions) and one step of
its AdamW (lr 1e-4, the config's weight decay 1e-5). ``train_one_epoch`` itself needs wandb, timm and a data
loader, so its loss lines are restated here (the script stays outside the package). Writes
``tests/golden/acmil.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

SETTINGS = {"acmil": (5, 10, 0.6), "one_token": (1, 0, 0.6)}


def run(acmil_ga, name: str, n_token: int, n_masked_patch: int, mask_drop: float) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    conf = SimpleNamespace(D_feat=16, D_inner=8, n_class=2, n_token=n_token)
    model = acmil_ga(conf, n_token=n_token, n_masked_patch=n_masked_patch, mask_drop=mask_drop)
    x = torch.randn(1, 37, 16)
    labels = torch.tensor([1])
    out = {f"ref/{k}": v.detach().clone().numpy() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        sub_eval, slide_eval, attn_eval = model(x)
    model.train()
    seed = 1234
    torch.manual_seed(seed)
    sub_preds, slide_preds, attn = model(x)
    criterion = torch.nn.CrossEntropyLoss()
    loss0 = criterion(sub_preds, labels.repeat_interleave(n_token)) if n_token > 1 else torch.tensor(0.0)
    loss1 = criterion(slide_preds, labels)
    diff_loss = torch.tensor(0.0)
    soft = torch.softmax(attn, dim=-1)
    for i in range(n_token):
        for j in range(i + 1, n_token):
            diff_loss = diff_loss + torch.cosine_similarity(soft[:, i], soft[:, j], dim=-1).mean() / (
                n_token * (n_token - 1) / 2
            )
    loss = diff_loss + loss0 + loss1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    out |= {f"step/{k}": v.detach().clone().numpy() for k, v in model.state_dict().items()}
    out |= {
        "features": x[0].numpy(),
        "label": np.array(1),
        "seed": np.array(seed),
        "eval/sub_logits": sub_eval.numpy(),
        "eval/slide_logits": slide_eval.numpy(),
        "eval/attention_logits": attn_eval[0].numpy(),
        "train/sub_logits": sub_preds.detach().numpy(),
        "train/slide_logits": slide_preds.detach().numpy(),
        "train/masked": (attn[0] <= -1e8).numpy(),
        "loss0": loss0.detach().numpy(),
        "loss1": loss1.detach().numpy(),
        "diff_loss": diff_loss.detach().numpy(),
        "loss": loss.detach().numpy(),
    }
    return {f"{name}/{k}": v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported dazhangyu123/ACMIL checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("acmil.npz"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))
    from architecture.transformer import ACMIL_GA  # the reference model

    arrays: dict[str, np.ndarray] = {}
    for name, setting in SETTINGS.items():
        arrays |= run(ACMIL_GA, name, *setting)
    provenance = {
        "repository": "https://github.com/dazhangyu123/ACMIL",
        "commit": args.commit,
        "called": "architecture.transformer.ACMIL_GA(conf(D_feat=16, D_inner=8, n_class=2), n_token, n_masked_patch, "
        "mask_drop) forward in eval and train mode (torch.manual_seed(seed) before); loss and AdamW(lr=1e-4, "
        "weight_decay=1e-5) step as Step3_WSI_classification_ACMIL.py train_one_epoch",
        "settings": {
            k: dict(zip(("n_token", "n_masked_patch", "mask_drop"), v)) for k, v in SETTINGS.items()
        },
        "script": "tests/golden/make_acmil.py",
        "torch": torch.__version__,
    }
    arrays["provenance"] = np.array(json.dumps(provenance))
    np.savez_compressed(args.out, **arrays)
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{k} {float(v):.6f}" for k, v in arrays.items() if k.endswith("/loss"))
    )


if __name__ == "__main__":
    main()
