"""Golden outputs of the reference TransMIL (szc19990412/TransMIL + lucidrains/nystrom-attention).

For ``tests/mil/test_parity_transmil.py``. Run by hand, outside slidescope, against exported checkouts::

    git --git-dir=TRANSMIL archive HEAD models | tar -x -C /tmp/ref-src-TransMIL
    git --git-dir=NYSTROM archive HEAD | tar -x -C /tmp/ref-src-nystrom                # 0.0.14
    git --git-dir=NYSTROM archive e3c4aa5 | tar -x -C /tmp/ref-src-nystrom-0.0.9      # pinned by TransMIL
    uv venv /tmp/ref-mil && uv pip install --python /tmp/ref-mil/bin/python torch numpy einops
    /tmp/ref-mil/bin/python tests/golden/make_transmil.py /tmp/ref-src-TransMIL \\
        --commit $(git --git-dir=TRANSMIL rev-parse HEAD) \\
        --nystrom /tmp/ref-src-nystrom --nystrom-commit $(git --git-dir=NYSTROM rev-parse HEAD) \\
        --nystrom-009 /tmp/ref-src-nystrom-0.0.9 --nystrom-009-commit $(git --git-dir=NYSTROM rev-parse e3c4aa5)

(TRANSMIL, NYSTROM: clones of szc19990412/TransMIL and lucidrains/nystrom-attention. TransMIL's
requirements.txt pins nystrom-attention==0.0.9 and einops==0.3.0; einops 0.8 computes the same
``reduce``/``rearrange``.)

It imports ``models/TransMIL.py`` by file path, with ``nystrom_attention`` from the given checkout, and
builds ``TransMIL(n_classes=3)``. That class hard-codes ``Linear(1024, 512)`` and width 512 (~2.7 M
weights); to keep the golden file small the script rebuilds its parts with the reference module's own
classes at width 32: ``_fc1 = Linear(32, 32) + ReLU``, ``layer1/layer2 = TransLayer(dim=32)`` (8 heads of 4,
16 landmarks, 6 pseudo-inverse iterations, residual conv 33), ``pos_layer = PPEG(dim=32)``, ``norm``,
``_fc2``, a fresh ``cls_token``; torch's default initialisation under fixed seeds. The forward is the
reference's. ``TransMIL.forward`` moves the CLS token with ``.cuda()``: that call is made a no-op here (CPU).
Three bags, 300, 40 and 3 tiles x 32-d (sequence lengths 325, 50 and 5, none a multiple of 16: 11, 14 and
11 zeros of alignment padding, i.e. a partial group, three all-zero groups plus a partial one, and more
zeros than tokens), each its own call, eval mode. The
same weights are run with nystrom-attention 0.0.14 (``reference``) and 0.0.9 (``reference-0.0.9``).
Writes ``tests/golden/transmil.npz``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIM, N_CLASSES, BAGS = 32, 3, (300, 40, 3)


def load_reference(transmil: Path, nystrom: Path):
    for name in [m for m in sys.modules if m.startswith("nystrom_attention")]:
        del sys.modules[name]  # the other checkout's package
    sys.path.insert(0, str(nystrom))
    try:
        spec = importlib.util.spec_from_file_location("ref_transmil", transmil / "models" / "TransMIL.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(nystrom))
    return module


def build(ref) -> nn.Module:
    torch.manual_seed(3)
    model = ref.TransMIL(n_classes=N_CLASSES)
    model._fc1 = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU())
    model.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
    model.layer1 = ref.TransLayer(dim=DIM)
    model.pos_layer = ref.PPEG(dim=DIM)
    model.layer2 = ref.TransLayer(dim=DIM)
    model.norm = nn.LayerNorm(DIM)
    model._fc2 = nn.Linear(DIM, N_CLASSES)
    with torch.no_grad():  # LayerNorms start at (1, 0): make them count
        for norm in (model.layer1.norm, model.layer2.norm, model.norm):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported szc19990412/TransMIL checkout")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--nystrom", type=Path, required=True, help="exported nystrom-attention (HEAD)")
    parser.add_argument("--nystrom-commit", required=True)
    parser.add_argument("--nystrom-009", type=Path, required=True, help="exported nystrom-attention 0.0.9")
    parser.add_argument("--nystrom-009-commit", required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("transmil.npz"))
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference's forward calls .cuda(); run on CPU

    gen = torch.Generator().manual_seed(5)
    bags = [torch.randn(1, n, DIM, generator=gen) for n in BAGS]
    out: dict[str, np.ndarray] = {}
    versions = {}
    state = None
    for mode, path, commit in (
        ("reference", args.nystrom, args.nystrom_commit),
        ("reference-0.0.9", args.nystrom_009, args.nystrom_009_commit),
    ):
        ref = load_reference(args.checkout, path)
        model = build(ref)
        if state is None:
            state = model.state_dict()
            out.update({f"w/{k}": v.numpy().copy() for k, v in state.items()})
        else:
            model.load_state_dict(state)
        versions[mode] = {
            "path": "nystrom_attention/nystrom_attention.py",
            "commit": commit,
            "version": (path / "setup.py").read_text().split("version = '")[1].split("'")[0],
        }
        with torch.no_grad():
            for b, h in enumerate(bags):
                out[f"bag{b}/features"] = h[0].numpy()
                out[f"bag{b}/{mode}/logits"] = model(data=h)["logits"].numpy()
    out["provenance"] = np.array(
        json.dumps(
            {
                "repository": "https://github.com/szc19990412/TransMIL",
                "commit": args.commit,
                "file": "models/TransMIL.py",
                "nystrom_attention": {
                    "repository": "https://github.com/lucidrains/nystrom-attention",
                    **versions,
                },
                "called": f"TransMIL(n_classes={N_CLASSES}) with _fc1, layer1, pos_layer, layer2, norm, _fc2, cls_token "
                f"rebuilt at width {DIM} from the module's own classes; forward(data=h) per bag in eval mode",
                "script": "tests/golden/make_transmil.py",
                "torch": torch.__version__,
            }
        )
    )
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
