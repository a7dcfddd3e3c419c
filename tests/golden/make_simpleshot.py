"""Golden file ``simpleshot.npz``: mileyan/simple_shot's nearest-centroid rule under UN, L2N and CL2N.

Run by hand, outside the package (never by pytest), against a checkout of the reference::

    uv venv /tmp/ref-fewshot && uv pip install --python /tmp/ref-fewshot/bin/python torch "numpy<2" scipy \
        torchvision tqdm configargparse
    git clone https://github.com/mileyan/simple_shot /tmp/ref-src/simple_shot  # commit 5d38fc83e698...
    /tmp/ref-fewshot/bin/python tests/golden/make_simpleshot.py /tmp/ref-src/simple_shot

Reference function called: ``src/train.py`` ``metric_class_type(gallery, query, train_label, test_label, shot,
train_mean, norm_type)`` with the module global ``args`` set to ``meta_val_way=3, num_NN=1`` (its evaluation
setting). It returns accuracy only, so each query's prediction is read by calling it on that one query labelled
with each class in turn. ``train_mean`` is the mean of a separate fixed "base" set (the reference: the mean
feature of the base-class training images). The ``datasets`` / ``models`` packages the script imports at its
top are replaced by empty stand-ins (the function does not use them). Inputs: 3 classes x 4 shots, 16-d,
unnormalised features with an offset (so centring matters), 20 base and 15 query slides, float32.
"""

from __future__ import annotations

import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("simpleshot.npz")
C, SHOTS, D = 3, 4, 16


def main(src: Path) -> None:
    sys.path.insert(0, str(src / "src"))
    for name in ("datasets", "models"):  # imported at the script's top, unused by metric_class_type
        sys.modules[name] = types.ModuleType(name)
    import train as ref  # noqa: E402

    ref.args = Namespace(meta_val_way=C, num_NN=1)
    rng = np.random.default_rng(7)
    offset = 3.0 * rng.normal(size=D)  # shared offset: CL2N's centring matters
    means = offset + rng.normal(size=(C, D))
    y_support = np.repeat(np.arange(C), SHOTS)  # class-major, as the reference's sample_case
    support = (means[y_support] + 2.5 * rng.normal(size=(C * SHOTS, D))).astype(np.float32)
    y_query = np.repeat(np.arange(C), 5)
    query = (means[y_query] + 2.5 * rng.normal(size=(len(y_query), D))).astype(np.float32)
    base_shift = 1.5 * rng.normal(size=D)  # the base classes' mean is not the novel classes' mean
    base = (offset + base_shift + 0.5 * rng.normal(size=(20, D)) + rng.normal(size=(20, 1))).astype(
        np.float32
    )
    train_mean = base.mean(0)
    preds = {}
    for norm in ("UN", "L2N", "CL2N"):
        out = []
        for q in range(len(query)):
            hit = [
                ref.metric_class_type(
                    support,
                    query[q : q + 1],
                    list(y_support),
                    [c],
                    SHOTS,
                    train_mean=train_mean,
                    norm_type=norm,
                )
                == 1.0
                for c in range(C)
            ]
            assert sum(hit) == 1
            out.append(hit.index(True))
        preds[norm] = np.array(out)
    commit = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    np.savez(
        OUT,
        support=support,
        y_support=y_support,
        query=query,
        y_query=y_query,
        base=base,
        pred_UN=preds["UN"],
        pred_L2N=preds["L2N"],
        pred_CL2N=preds["CL2N"],
        provenance=np.array(
            f"mileyan/simple_shot@{commit or '5d38fc83e698f11fea56bdfa3e1a8fdde9935e1a'}; "
            "src/train.py metric_class_type (num_NN=1) per query; "
            "tests/golden/make_simpleshot.py"
        ),
    )
    print({k: v.tolist() for k, v in preds.items()}, "->", OUT)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
