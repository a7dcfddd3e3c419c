"""MI-Zero pooling against its two reference implementations (golden file); the converter for TITAN's prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.vlm.api import load_prompts
from slidescope.vlm.zeroshot import mi_zero

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(ROOT / "tests" / "golden" / "mizero.npz") as z:
        data = {k: z[k] for k in z.files}
    assert "MI-Zero@" in str(data["provenance"]) and "CONCH@" in str(data["provenance"])
    return data


def test_mean_pooling_matches_conch_run_mizero(golden) -> None:
    w = torch.from_numpy(golden["classifier"]).T  # (C, d)
    temp = float(golden["temp_scale"])
    for j in golden["topj"].tolist():
        for i in range(len(golden["sizes"])):
            res = mi_zero(golden[f"slide_{i}"], w, k=j, logit_scale=temp, pooling="mean")
            pooled = torch.from_numpy(golden[f"conch_pooled_{j}"][i])
            torch.testing.assert_close(res.scores, pooled, atol=1e-6, rtol=0)
            # run_mizero's probabilities: softmax(pooled * logit_scale.exp())
            torch.testing.assert_close(
                res.probs, torch.softmax(pooled.double() * temp, 0).float(), atol=1e-5, rtol=0
            )
            assert int(res.scores.argmax()) == int(golden[f"conch_pred_{j}"][i])


def test_sum_pooling_matches_mizero_topj_pooling(golden) -> None:
    w = torch.from_numpy(golden["classifier"]).T
    for j in golden["topj"].tolist():
        for i, n in enumerate(golden["sizes"].tolist()):
            res = mi_zero(golden[f"slide_{i}"], w, k=j, pooling="sum", logit_scale=1.0)
            mean = mi_zero(golden[f"slide_{i}"], w, k=j, pooling="mean", logit_scale=1.0)
            assert res.pooling == "sum" and int(res.scores.argmax()) == int(golden[f"mizero_pred_{j}"][i])
            torch.testing.assert_close(res.scores, min(j, n) * mean.scores)  # the sum of the top-min(j, N)
            torch.testing.assert_close(
                res.probs, torch.softmax(min(j, n) * mean.scores, 0)
            )  # k times sharper
    with pytest.raises(InvalidParameterError, match="pooling"):
        mi_zero(golden["slide_0"], w, pooling="max")  # type: ignore[arg-type]


def test_titan_prompt_converter_reads_a_titan_shaped_checkout(tmp_path: Path) -> None:
    """TITAN's prompts are CC-BY-NC-ND, so we ship a converter, not the text: it reads ``TEMPLATES`` from
    ``titan/utils.py`` (parsed, never run) and ``label_dict``/``prompts`` from ``datasets/config_<task>.yaml`` of
    a checkout laid out like mahmoodlab/TITAN @ 33042f5 (built here with made-up strings), keeps TITAN's class
    order and placeholder, and the result loads with ``--prompts``."""
    import subprocess
    import sys

    import yaml

    checkout = tmp_path / "TITAN"
    (checkout / "titan").mkdir(parents=True)
    (checkout / "datasets").mkdir()
    (checkout / "titan" / "utils.py").write_text(
        "import torch  # never imported by the converter\n"
        "TEMPLATES = [\n    'CLASSNAME.',\n    'a slide of CLASSNAME.',\n    'CLASSNAME is seen.',\n]\n"
        "def f():\n    raise SystemExit('executed')\nf()\n"
    )
    (checkout / "datasets" / "config_toy.yaml").write_text(
        yaml.safe_dump(
            {
                "label_dict": {"ZZZ": 0, "AAA": 2, "MMM": 1},
                "prompts": {
                    "AAA": ["alpha tumour", "AAA"],
                    "MMM": ["mid lesion"],
                    "ZZZ": ["zeta tissue", "ZZZ"],
                },
                "task": "multiclass",
            }
        )
    )
    out = tmp_path / "p.yaml"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "titan_prompts.py"),
            str(checkout),
            "--task",
            "toy",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "CC-BY-NC-ND" in out.read_text() and "mahmoodlab/TITAN @" in out.read_text()
    prompts = load_prompts(out)
    assert prompts.names == ["ZZZ", "MMM", "AAA"]  # TITAN's label_dict order, not alphabetical
    assert len(prompts.templates) == 3
    built, idx = prompts.build()
    assert len(built) == 3 * 5 and built[0] == "zeta tissue." and "CLASSNAME" not in " ".join(built)
    assert idx.tolist() == [0] * 6 + [1] * 3 + [2] * 6

    bad = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "titan_prompts.py"), str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "TITAN checkout" in bad.stderr
