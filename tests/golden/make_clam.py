"""Golden outputs of the reference CLAM-SB / CLAM-MB (mahmoodlab/CLAM) for ``tests/mil/test_parity_clam.py``.

Run by hand, outside slidescope, against an exported checkout of the reference::

    git --git-dir=MIRROR archive HEAD models | tar -x -C /tmp/ref-src-CLAM   # MIRROR: a clone of mahmoodlab/CLAM
    uv venv /tmp/ref-mil && uv pip install --python /tmp/ref-mil/bin/python torch numpy
    /tmp/ref-mil/bin/python tests/golden/make_clam.py /tmp/ref-src-CLAM --commit $(git --git-dir=MIRROR rev-parse HEAD)

It imports the repository's ``models/model_clam.py`` by file path (not ``models/__init__.py``, which pulls
in the feature encoders) and builds ``CLAM_SB`` / ``CLAM_MB`` with ``gate=True, size_arg="small",
dropout=0.25, k_sample=8, n_classes=3, instance_loss_fn=CrossEntropyLoss()`` (CLAM's ``--inst_loss ce``;
the default smooth top-1 SVM comes from the external ``topk`` package and is not reproduced). "small" means
hidden sizes [D, 512, 256], i.e. ~1 MB of weights; to keep the golden file small the script then replaces
the layers by the same recipe at sizes [32, 16, 8] (``Linear -> ReLU -> Dropout -> Attn_Net_Gated`` from the
reference module, and the bag / instance classifiers), with torch's default initialisation under fixed seeds.
Every forward and loss line that runs is the reference's own code. Per bag (two bags: 120 and 20 tiles of
32-d, labels 2 and 0), in eval mode (dropout off):

- ``model(h, label=label, instance_eval=True)`` with ``subtyping`` False and True: logits, raw attention
  ``A_raw`` (K x N) and ``instance_loss``;
- the total loss of ``utils/core_utils.py``'s ``train_loop_clam``, ``bag_weight * CE(logits, label) +
  (1 - bag_weight) * instance_loss`` with ``bag_weight = 0.7`` (restated here; the loop needs a data loader),
  and its gradient for every parameter (``subtyping=False``).

Writes ``tests/golden/clam_sb.npz`` and ``tests/golden/clam_mb.npz``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZES = (32, 16, 8)  # D, E (CLAM: 512), attention hidden (CLAM: 256)
BAGS = ((120, 2), (20, 0))  # (tiles, label)
N_CLASSES, K_SAMPLE, BAG_WEIGHT = 3, 8, 0.7


def load_reference(checkout: Path):
    spec = importlib.util.spec_from_file_location("model_clam", checkout / "models" / "model_clam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(ref, kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    cls = ref.CLAM_SB if kind == "sb" else ref.CLAM_MB
    model = cls(
        gate=True,
        size_arg="small",
        dropout=0.25,
        k_sample=K_SAMPLE,
        n_classes=N_CLASSES,
        instance_loss_fn=nn.CrossEntropyLoss(),
        subtyping=False,
        embed_dim=SIZES[0],
    )
    d, e, a = SIZES
    branches = 1 if kind == "sb" else N_CLASSES
    # the reference constructor's recipe, at small sizes
    model.attention_net = nn.Sequential(
        nn.Linear(d, e),
        nn.ReLU(),
        nn.Dropout(0.25),
        ref.Attn_Net_Gated(L=e, D=a, dropout=0.25, n_classes=branches),
    )
    if kind == "sb":
        model.classifiers = nn.Linear(e, N_CLASSES)
    else:
        model.classifiers = nn.ModuleList([nn.Linear(e, 1) for _ in range(N_CLASSES)])
    model.instance_classifiers = nn.ModuleList([nn.Linear(e, 2) for _ in range(N_CLASSES)])
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported mahmoodlab/CLAM checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    ref = load_reference(args.checkout)

    gen = torch.Generator().manual_seed(123)
    bags = [torch.randn(n, SIZES[0], generator=gen) for n, _ in BAGS]
    for kind, seed in (("sb", 1), ("mb", 2)):
        model = build(ref, kind, seed)
        out: dict[str, np.ndarray] = {}
        out.update({f"w/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()})
        model.zero_grad()
        for b, ((n, label), h) in enumerate(zip(BAGS, bags, strict=True)):
            out[f"bag{b}/features"] = h.numpy()
            out[f"bag{b}/label"] = np.array(label)
            y = torch.tensor([label])
            for subtyping in (False, True):
                model.subtyping = subtyping
                logits, _, _, a_raw, res = model(h, label=y, instance_eval=True)
                tag = f"bag{b}/subtyping{int(subtyping)}"
                out[f"{tag}/instance_loss"] = np.array(res["instance_loss"].item())
                out[f"{tag}/inst_labels"] = res["inst_labels"]
                out[f"{tag}/inst_preds"] = res["inst_preds"]
                if not subtyping:
                    out[f"bag{b}/logits"] = logits.detach().numpy()
                    out[f"bag{b}/attention_raw"] = a_raw.detach().numpy()
                    loss = nn.CrossEntropyLoss()(logits, y)  # train_loop_clam's loss_fn (bag_loss ce)
                    total = BAG_WEIGHT * loss + (1 - BAG_WEIGHT) * res["instance_loss"]
                    out[f"bag{b}/total_loss"] = np.array(total.item())
                    total.backward()  # gradients accumulate over the two bags (sum)
        model.subtyping = False
        # parameters the loss does not reach (other classes' instance classifiers) have no gradient: 0
        out.update(
            {
                f"grad/{k}": (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().copy()
                for k, p in model.named_parameters()
            }
        )
        out["provenance"] = np.array(
            json.dumps(
                {
                    "repository": "https://github.com/mahmoodlab/CLAM",
                    "commit": args.commit,
                    "file": "models/model_clam.py",
                    "called": f"CLAM_{kind.upper()}(gate=True, size_arg='small', dropout=0.25, k_sample={K_SAMPLE}, "
                    f"n_classes={N_CLASSES}, instance_loss_fn=CrossEntropyLoss()), layers rebuilt at sizes "
                    f"{list(SIZES)}; forward(h, label, instance_eval=True) in eval mode per bag, subtyping "
                    f"False/True; total = {BAG_WEIGHT}*CE + {1 - BAG_WEIGHT:.1f}*instance_loss "
                    "(utils/core_utils.py train_loop_clam), grads summed over both bags (subtyping False)",
                    "script": "tests/golden/make_clam.py",
                    "torch": torch.__version__,
                }
            )
        )
        path = args.out_dir / f"clam_{kind}.npz"
        np.savez_compressed(path, **out)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
