"""Golden outputs of the reference DSMIL (binli123/dsmil-wsi) for ``tests/mil/test_parity_dsmil.py``.

Run by hand, outside slidescope, against an exported checkout of the reference::

    git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/ref-src-dsmil   # MIRROR: a clone of binli123/dsmil-wsi
    uv venv /tmp/ref && uv pip install --python /tmp/ref/bin/python torch numpy
    /tmp/ref/bin/python tests/golden/make_dsmil.py /tmp/ref-src-dsmil --commit $(git --git-dir=MIRROR rev-parse HEAD)

It imports the repository's ``dsmil.py`` (``FCLayer``, ``BClassifier``, ``MILNet``), builds it as
``train_tcga.py``'s ``init_model`` does (``nonlinear=1``, ``dropout_v=0``, ``passing_v=False``; torch's
default initialisation under a fixed seed instead of the orthogonal one: any weights will do), runs one bag of
37 tiles x 16-d with label 1 of 2 classes, and computes the loss of ``train_tcga.py``'s ``train()``
(``BCEWithLogitsLoss`` on the bag prediction and on the max over the instance predictions, one-hot label,
``0.5 * bag + 0.5 * max``) and one step of its optimiser (Adam, lr 1e-4, betas (0.5, 0.9), weight decay
1e-3). ``train()`` itself needs CUDA, so its loss lines are restated here (the script stays outside the
package). Writes ``tests/golden/dsmil.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="exported binli123/dsmil-wsi checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit hash")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dsmil.npz"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))
    import dsmil as mil  # the reference module

    torch.manual_seed(0)
    n, d, c = 37, 16, 2
    feats = torch.randn(n, d)
    label = 1
    i_classifier = mil.FCLayer(in_size=d, out_size=c)
    b_classifier = mil.BClassifier(input_size=d, output_class=c, dropout_v=0.0, nonlinear=True)
    milnet = mil.MILNet(i_classifier, b_classifier).eval()  # no dropout is active at these settings anyway
    state = {k: v.detach().clone().numpy() for k, v in milnet.state_dict().items()}

    ins_prediction, bag_prediction, attention, bag_embedding = milnet(feats)
    max_prediction, _ = torch.max(ins_prediction, 0)
    bag_label = torch.zeros(1, c)
    bag_label[0, label] = 1.0
    criterion = torch.nn.BCEWithLogitsLoss()
    bag_loss = criterion(bag_prediction.view(1, -1), bag_label.view(1, -1))
    max_loss = criterion(max_prediction.view(1, -1), bag_label.view(1, -1))
    loss = 0.5 * bag_loss + 0.5 * max_loss
    optimizer = torch.optim.Adam(milnet.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    stepped = {k: v.detach().clone().numpy() for k, v in milnet.state_dict().items()}

    provenance = {
        "repository": "https://github.com/binli123/dsmil-wsi",
        "commit": args.commit,
        "called": "dsmil.FCLayer(16, 2), dsmil.BClassifier(16, 2, dropout_v=0.0, nonlinear=True), dsmil.MILNet "
        "forward in eval mode; loss and Adam(lr=1e-4, betas=(0.5, 0.9), weight_decay=1e-3) step as "
        "train_tcga.py train()",
        "script": "tests/golden/make_dsmil.py",
        "torch": torch.__version__,
    }
    arrays = {f"ref/{k}": v for k, v in state.items()}
    arrays |= {f"step/{k}": v for k, v in stepped.items()}
    arrays |= {
        "features": feats.numpy(),
        "label": np.array(label),
        "instance_logits": ins_prediction.detach().numpy(),
        "bag_logits": bag_prediction.detach().numpy(),
        "attention": attention.detach().numpy(),
        "bag_embedding": bag_embedding.detach().numpy(),
        "bag_loss": bag_loss.detach().numpy(),
        "max_loss": max_loss.detach().numpy(),
        "loss": loss.detach().numpy(),
        "provenance": np.array(json.dumps(provenance)),
    }
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: loss {loss.item():.6f}, bag logits {bag_prediction.detach().numpy().ravel()}")


if __name__ == "__main__":
    main()
