"""Golden outputs of CLAM's gated-attention bag path (mahmoodlab/CLAM ``CLAM_SB``) for ``tests/mil/test_parity_abmil.py``.

Our ``abmil`` is Ilse et al.'s gated attention with CLAM's layer layout and defaults (see its docstring),
so the reference it is checked against is CLAM's ``CLAM_SB`` without instance evaluation. Run by hand,
outside slidescope, against an exported checkout of the reference::

    git --git-dir=MIRROR archive HEAD models | tar -x -C /tmp/ref-src-CLAM   # MIRROR: a clone of mahmoodlab/CLAM
    uv venv /tmp/ref-mil && uv pip install --python /tmp/ref-mil/bin/python torch numpy
    /tmp/ref-mil/bin/python tests/golden/make_abmil.py /tmp/ref-src-CLAM --commit $(git --git-dir=MIRROR rev-parse HEAD)

Builds ``CLAM_SB(gate=True, size_arg="small", dropout=0.25, n_classes=2)`` from ``models/model_clam.py``
with its layers rebuilt at sizes [32, 16, 8] as ``make_clam.py`` does (to keep the file small), and calls
``model(h)`` (``instance_eval=False``) in eval mode on two bags of 120 and 7 tiles x 32-d. Stores the
weights, the inputs, the logits and the raw attention. Writes ``tests/golden/abmil.npz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from make_clam import SIZES, load_reference  # same folder: run as a script
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported mahmoodlab/CLAM checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("abmil.npz"))
    args = parser.parse_args()
    ref = load_reference(args.checkout)

    torch.manual_seed(7)
    d, e, a = SIZES
    model = ref.CLAM_SB(gate=True, size_arg="small", dropout=0.25, n_classes=2, embed_dim=d)
    model.attention_net = nn.Sequential(
        nn.Linear(d, e), nn.ReLU(), nn.Dropout(0.25), ref.Attn_Net_Gated(L=e, D=a, dropout=0.25, n_classes=1)
    )
    model.classifiers = nn.Linear(e, 2)
    model.instance_classifiers = nn.ModuleList([nn.Linear(e, 2) for _ in range(2)])
    model.eval()
    out: dict[str, np.ndarray] = {f"w/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for b, n in enumerate((120, 7)):
            h = torch.randn(n, d, generator=gen)
            logits, _, _, a_raw, _ = model(h)
            out[f"bag{b}/features"] = h.numpy()
            out[f"bag{b}/logits"] = logits.numpy()
            out[f"bag{b}/attention_raw"] = a_raw.numpy()
    out["provenance"] = np.array(
        json.dumps(
            {
                "repository": "https://github.com/mahmoodlab/CLAM",
                "commit": args.commit,
                "file": "models/model_clam.py",
                "called": f"CLAM_SB(gate=True, size_arg='small', dropout=0.25, n_classes=2), layers rebuilt at sizes "
                f"{list(SIZES)}; forward(h) (instance_eval=False) in eval mode, one bag per call",
                "script": "tests/golden/make_abmil.py",
                "torch": torch.__version__,
            }
        )
    )
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
