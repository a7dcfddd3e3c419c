"""Golden file ``mizero.npz``: MI-Zero top-j pooling, from mahmoodlab/MI-Zero and from mahmoodlab/CONCH.

Run by hand, outside the package (never by pytest), against checkouts of both references::

    uv venv /tmp/ref-fewshot && uv pip install --python /tmp/ref-fewshot/bin/python torch "numpy<2" \
        scikit-learn pandas h5py tqdm
    git clone https://github.com/mahmoodlab/MI-Zero /tmp/ref-src/mizero   # commit 047922f2e11b...
    git clone https://github.com/mahmoodlab/CONCH /tmp/ref-src/conch      # commit 141cc09c7d4f...
    /tmp/ref-fewshot/bin/python tests/golden/make_mizero.py /tmp/ref-src/mizero /tmp/ref-src/conch

Two references, two poolings of the per-tile cosine similarities ``L = normalize(F) W`` (N, C):

* MI-Zero ``src/slidelevel_zeroshot_multiprompt.py`` ``topj_pooling(logits, topj)``: the *sum* of each class's
  top-j similarities, returning only the argmax (MI-Zero's code computes no probabilities). Called directly on
  ``L``; its predictions are stored (``mizero_pred_j``).
* CONCH ``conch/downstream/zeroshot_path.py`` ``run_mizero(model, classifier, dataloader, ...,
  dump_results=True)``: the *mean* of the top-j similarities, probabilities ``softmax(pooled *
  logit_scale.exp())`` (its line computing ``probs_all``; they are not returned, so the test applies that
  softmax to the dumped pooled logits with the dumped ``temp_scale``). Called with a stand-in model whose
  ``visual.forward_project`` is the identity and ``logit_scale = log(100)``, and a list of one-slide batches.

The modules these scripts import at their top for other functions (tokenizers, model factories) are empty
stand-ins. Inputs: 4 slides of 3..40 tiles (one with fewer tiles than the largest j), 8-d, 3 classes.
"""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("mizero.npz")
TOPJ = (1, 5, 10, 50)


def _commit(src: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def main(mizero_src: Path, conch_src: Path) -> None:
    for name in ("transformers", "models", "models.factory", "conch.open_clip_custom"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["transformers"].AutoTokenizer = None  # type: ignore[attr-defined]
    sys.modules["models.factory"].create_model = None  # type: ignore[attr-defined]
    sys.modules["conch.open_clip_custom"].tokenize = None  # type: ignore[attr-defined]
    sys.modules["conch.open_clip_custom"].get_tokenizer = None  # type: ignore[attr-defined]
    sys.path.insert(0, str(mizero_src / "src"))
    sys.path.insert(0, str(conch_src))
    import slidelevel_zeroshot_multiprompt as mizero  # noqa: E402
    from conch.downstream import zeroshot_path as conch  # noqa: E402

    rng = np.random.default_rng(3)
    classifier = rng.normal(size=(8, 3))
    classifier /= np.linalg.norm(classifier, axis=0, keepdims=True)  # (d, C), normalised columns
    sizes = (40, 12, 3, 25)
    slides = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    labels = [0, 1, 2, 1]
    model = types.SimpleNamespace(
        visual=types.SimpleNamespace(forward_project=lambda x: x), logit_scale=torch.tensor(math.log(100.0))
    )
    loader = [
        {"img": torch.from_numpy(s)[None], "label": torch.tensor([y]), "coords": torch.zeros(1, len(s), 2)}
        for s, y in zip(slides, labels, strict=True)
    ]
    cw = torch.from_numpy(classifier).float()
    _, dump = conch.run_mizero(
        model, cw, loader, "cpu", topj=TOPJ, dump_results=True, metrics=["acc", "bacc"]
    )
    out: dict[str, np.ndarray] = {
        "classifier": classifier.astype(np.float32),
        "sizes": np.array(sizes),
        "topj": np.array(TOPJ),
        "temp_scale": np.array(dump["temp_scale"]),
    }
    for i, s in enumerate(slides):
        out[f"slide_{i}"] = s
    for j in TOPJ:
        out[f"conch_pooled_{j}"] = dump["logits"][j]  # (slides, C) top-j means
        out[f"conch_pred_{j}"] = np.array(dump["preds"][j])
        preds = []
        for s in slides:
            sim = torch.nn.functional.normalize(torch.from_numpy(s), dim=-1) @ cw
            preds.append(int(mizero.topj_pooling(sim, topj=TOPJ)[j]))
        out[f"mizero_pred_{j}"] = np.array(preds)
    out["provenance"] = np.array(
        f"mahmoodlab/MI-Zero@{_commit(mizero_src) or '047922f2e11b9a2992b12d1d3b6375db7db1e8fb'} "
        "src/slidelevel_zeroshot_multiprompt.py topj_pooling (top-j sum, argmax only); "
        f"mahmoodlab/CONCH@{_commit(conch_src) or '141cc09c7d4ff33d8eda562bd75169b457f71a62'} "
        "conch/downstream/zeroshot_path.py run_mizero (top-j mean, probs = softmax(pooled * temp_scale)); "
        "tests/golden/make_mizero.py"
    )
    np.savez(OUT, **out)
    print({j: out[f"conch_pred_{j}"].tolist() for j in TOPJ}, "->", OUT)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
