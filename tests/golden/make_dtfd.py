"""Golden outputs of the reference DTFD-MIL (hrzhang1123/DTFD-MIL) for ``tests/mil/test_parity_dtfd.py``.

Run by hand, outside slidescope, against an exported checkout of the reference::

    git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/ref-src-dtfd   # MIRROR: a clone of hrzhang1123/DTFD-MIL
    uv venv /tmp/ref && uv pip install --python /tmp/ref/bin/python torch numpy scikit-learn tensorboard
    /tmp/ref/bin/python tests/golden/make_dtfd.py /tmp/ref-src-dtfd --commit $(git --git-dir=MIRROR rev-parse HEAD)

For each distillation (``AFS``, the script's default, and ``MaxMinS``) it builds the reference modules as
``Main_DTFD_MIL.py``'s ``main()`` does (``DimReduction``, ``Attention_Gated``, ``Classifier_1fc``,
``Attention_with_Classifier``; here ``in_chn`` 16, ``mDim`` 8, 2 classes, fixed seed), and calls the
reference's own training function ``train_attention_preFeature_DTFD`` for one epoch of one slide (37 tiles,
label 1) with its defaults: ``numGroup`` 4, ``total_instance`` 4, ``grad_clipping`` 5, two Adam optimisers
(lr 1e-4, weight decay 1e-4). It records the random split (the shuffled ``feat_index``), the tier-1 and
tier-2 logits and losses (through the criterion), the gradients each optimiser steps with (after the
reference's clipping) and the parameters after the step.

One shim: the reference steps its tier-1 optimiser before the tier-2 ``backward()``, which torch >= 1.5
refuses ("modified by an inplace operation"). The tier-1 optimiser is therefore wrapped to write its update
through ``.data``, as torch.optim did when the reference was written; the numbers are those of the
reference's torch (the tier-2 gradients reaching tier 1 are discarded by its next ``zero_grad()`` anyway).
Writes ``tests/golden/dtfd.npz``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

IN_CHN, M_DIM, N_CLS, N_TILES, LABEL = 16, 8, 2, 37, 1


class DataStepAdam:
    """Adam whose step writes through ``.data`` (torch < 1.5 semantics); records the gradients it used."""

    def __init__(self, params, **kwargs) -> None:
        self.params = list(params)
        self.shadow = [p.detach().clone().requires_grad_(True) for p in self.params]
        self.inner = torch.optim.Adam(self.shadow, **kwargs)
        self.grads: list[torch.Tensor] = []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.grads = [p.grad.detach().clone() for p in self.params]
        for s, p in zip(self.shadow, self.params):
            s.grad = p.grad.detach().clone()
        self.inner.step()
        for s, p in zip(self.shadow, self.params):
            p.data.copy_(s.detach())


class RecordingCE(torch.nn.CrossEntropyLoss):
    """The reference's ``CrossEntropyLoss(reduction='none')`` that keeps what it was called with."""

    def __init__(self) -> None:
        super().__init__(reduction="none")
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, input, target):
        out = super().forward(input, target)
        self.calls.append((input.detach().clone(), out.detach().mean().clone()))
        return out


def run(ref, modules, distill: str, seed: int) -> dict[str, np.ndarray]:
    attention_mod, network_mod = modules
    torch.manual_seed(seed)
    feats = 25.0 * torch.randn(N_TILES, IN_CHN)  # large embeddings: gradient norms above the clip of 5
    classifier = network_mod.Classifier_1fc(M_DIM, N_CLS, 0)
    attention = attention_mod.Attention_Gated(M_DIM)
    dim_reduction = network_mod.DimReduction(IN_CHN, M_DIM, numLayer_Res=0)
    att_cls = attention_mod.Attention_with_Classifier(L=M_DIM, num_cls=N_CLS, droprate=0)
    saved = {
        "classifier": classifier,
        "dim_reduction": dim_reduction,
        "attention": attention,
        "att_classifier": att_cls,
    }  # the reference's checkpoint layout (tsave_dict)
    out = {
        f"ref/{part}/{k}": v.detach().clone().numpy()
        for part, m in saved.items()
        for k, v in m.state_dict().items()
    }
    tier1 = [*classifier.parameters(), *attention.parameters(), *dim_reduction.parameters()]
    opt0 = DataStepAdam(tier1, lr=1e-4, weight_decay=1e-4)
    opt1 = DataStepAdam(att_cls.parameters(), lr=1e-4, weight_decay=1e-4)
    criterion = RecordingCE()
    params = SimpleNamespace(batch_size=1, device="cpu", grad_clipping=5.0, train_show_freq=40)
    writer = SimpleNamespace(add_scalar=lambda *a, **k: None)
    shuffled: list[list[int]] = []
    shuffle = random.shuffle

    def recording_shuffle(x):
        shuffle(x)
        shuffled.append(list(x))

    random.seed(seed)
    random.shuffle = recording_shuffle
    try:
        ref.train_attention_preFeature_DTFD(
            mDATA_list=(["slide"], [feats], [LABEL]),
            classifier=classifier,
            dimReduction=dim_reduction,
            attention=attention,
            UClassifier=att_cls,
            optimizer0=opt0,
            optimizer1=opt1,
            epoch=0,
            ce_cri=criterion,
            params=params,
            f_log=io.StringIO(),
            writer=writer,
            numGroup=4,
            total_instance=4,
            distill=distill,
        )
    finally:
        random.shuffle = shuffle
    (tier1_logits, loss0), (tier2_logits, loss1) = criterion.calls
    names0 = [
        f"{part}/{k}"
        for part, m in (
            ("classifier", classifier),
            ("attention", attention),
            ("dim_reduction", dim_reduction),
        )
        for k, _ in m.named_parameters()
    ]
    names1 = [f"att_classifier/{k}" for k, _ in att_cls.named_parameters()]
    out |= {f"grad/{k}": g.numpy() for k, g in zip(names0 + names1, opt0.grads + opt1.grads, strict=True)}
    out |= {
        f"step/{part}/{k}": v.detach().clone().numpy()
        for part, m in saved.items()
        for k, v in m.state_dict().items()
    }
    out |= {
        "features": feats.numpy(),
        "permutation": np.array(shuffled[-1]),
        "tier1_logits": tier1_logits.numpy(),
        "tier2_logits": tier2_logits.numpy(),
        "loss0": loss0.numpy(),
        "loss1": loss1.numpy(),
    }
    return {f"{distill}/{k}": v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported hrzhang1123/DTFD-MIL checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dtfd.npz"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))
    sys.argv = sys.argv[:1]
    import Main_DTFD_MIL as ref  # the reference training script (its main() is not run)
    from Model import Attention as attention_mod
    from Model import network as network_mod

    arrays = run(ref, (attention_mod, network_mod), "AFS", 0) | run(
        ref, (attention_mod, network_mod), "MaxMinS", 1
    )
    provenance = {
        "repository": "https://github.com/hrzhang1123/DTFD-MIL",
        "commit": args.commit,
        "called": "Main_DTFD_MIL.train_attention_preFeature_DTFD (one slide, numGroup=4, total_instance=4, "
        "grad_clipping=5, Adam lr=1e-4 weight_decay=1e-4 for both tiers; distill AFS and MaxMinS) on modules "
        "Model.network.DimReduction(16, 8), Model.Attention.Attention_Gated(8), Model.network.Classifier_1fc(8, 2),"
        " Model.Attention.Attention_with_Classifier(L=8, num_cls=2); tier-1 optimiser steps through .data",
        "script": "tests/golden/make_dtfd.py",
        "torch": torch.__version__,
    }
    arrays["provenance"] = np.array(json.dumps(provenance))
    np.savez_compressed(args.out, **arrays)
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{k} {float(v):.6f}" for k, v in arrays.items() if k.endswith("loss1"))
    )


if __name__ == "__main__":
    main()
