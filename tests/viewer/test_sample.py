"""File > Open Sample does not freeze the window: no torch, no embeddings, the tiling the encoder will use
(issue 15, defect 7: the first Open Sample froze the window 14-30 s while torch loaded and embedded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = """
import json, sys, time
t = time.perf_counter()
from slidescope.viewer._sample import prepare_sample
slide, store, tissue = prepare_sample(embed=False)
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "torch": "torch" in sys.modules,
    "tiling": store.tiling_key,
    "n": store.n_tiles,
    "encoders": store.encoders(complete_only=False),
    "truth": float(store.scores("ground-truth/tumour-fraction").sum()),
}))
"""


def test_open_sample_imports_no_torch_and_tiles_as_the_encoder_will(sample, tmp_path: Path) -> None:
    from slidescope.features import open_store

    env = {**os.environ, "SLIDESCOPE_CACHE": str(tmp_path / "fresh"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["encoders"] == []  # nothing heavy on the UI thread
    # the same tiling and ground truth as the store whose embeddings the sample fixture extracted, so
    # Analyse extracts into this very tiling (and reuses it after)
    embedded = open_store(sample.store)
    assert got["tiling"] == embedded.tiling_key and got["n"] == embedded.n_tiles
    truth = np.asarray(embedded.scores("ground-truth/tumour-fraction"), dtype=np.float64)
    assert abs(got["truth"] - truth.sum()) < 1e-3
    print(f"Open Sample, fresh cache: {got['seconds']:.2f} s")
