"""Slide encoders against their publishers' code (tests/golden/make_trident_slide_layouts.py).

The golden file holds, for CHIEF, MADELEINE and the three FEATHER models, the state-dict keys and shapes of the
module the publisher's code builds (CHIEF through TRIDENT's own ``_build``), and the output of TRIDENT's
``forward`` with every tensor filled by a seeded rule on fixed features. Here slidescope's module is built at
the published size, must have exactly those keys and shapes, and the same tensors (written to a
safetensors / ``torch.save`` file under the publisher's key names) are loaded through
``create_slide_encoder(weights=...)``; its slide embedding must equal TRIDENT's.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slidescope.features.slide_encoders import create_slide_encoder, get_slide_encoder_config

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "trident_slide_layouts.json").read_text())
MODELS = ["chief", "madeleine", "feather-conch-v1.5", "feather-uni2", "feather-uni"]
#: how the published file names the keys, relative to the golden layout (FEATHER: transformers wrapper)
PREFIX = {"feather-conch-v1.5": "model.", "feather-uni2": "model.", "feather-uni": "model."}


def fill(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The golden script's fill(): a normal draw seeded by crc32(key), scaled by 1/sqrt(fan-in)."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        scale = 1.0 / np.sqrt(shape[-1]) if len(shape) >= 2 else 0.1
        out[key] = torch.from_numpy((rng.standard_normal(tuple(shape)) * scale).astype(np.float32))
    return out


def inputs(dim: int) -> torch.Tensor:
    rng = np.random.default_rng(dim)
    return torch.from_numpy(rng.standard_normal((GOLDEN["n_tiles"], dim)).astype(np.float32))


def test_golden_provenance() -> None:
    prov = GOLDEN["provenance"]
    assert prov["TRIDENT"]["commit"] == "a91fa8490e0210ebbbe58452c3babe009e0ab7ca"
    for repo in ("MIL-Lab", "MADELEINE", "CHIEF"):
        assert len(prov[repo]["commit"]) == 40


@pytest.mark.parametrize("name", MODELS)
def test_layout_is_the_publishers(name: str) -> None:
    ref = GOLDEN["encoders"][name]
    model = create_slide_encoder(name, pretrained=False)
    prefix = PREFIX.get(name, "")
    ours = {prefix + k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["shapes"]
    assert get_slide_encoder_config(name).n_params == ref["n_params"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_output_equals_tridents_forward(name: str, fmt: str, tmp_path: Path) -> None:
    ref = GOLDEN["encoders"][name]
    cfg = get_slide_encoder_config(name)
    state = fill(ref["shapes"])
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_slide_encoder(name, weights=path)
    assert model.weights_digest is not None and model.weights_digest.startswith("sha256:")
    z = model.embed(inputs(int(cfg.patch_dim or 0)))
    expected = np.asarray(ref["output"], np.float32)
    assert z.shape == (cfg.embed_dim,) == expected.shape
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_mean_equals_tridents_mean() -> None:
    ref = GOLDEN["encoders"]["mean-uni"]
    model = create_slide_encoder("mean")
    z = model.embed(inputs(1024))
    assert ref["embedding_dim"] == 1024
    np.testing.assert_allclose(z.numpy(), np.asarray(ref["output"], np.float32), rtol=1e-6, atol=1e-6)


def test_wrong_weights_are_named(tmp_path: Path) -> None:
    from slidescope.features import WeightsError

    ref = GOLDEN["encoders"]["feather-uni2"]["shapes"]
    path = tmp_path / "model.safetensors"
    save_file(fill(ref), str(path))
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_slide_encoder("feather-conch-v1.5", weights=tmp_path)  # a folder holding the file works too
    with pytest.raises(WeightsError, match="no weights file"):
        create_slide_encoder("madeleine", weights=tmp_path)
    with pytest.raises(WeightsError, match="no copy on the Hugging Face hub"):
        create_slide_encoder("chief")


def moozy_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The golden script's moozy_inputs(): tiles on distinct cells of a grid of 448 level-0 px."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(12 * 9, size=n, replace=False)
    coords = np.stack([cells % 12, cells // 12], 1).astype(np.int64) * 448 + 1000
    return rng.standard_normal((n, 384)).astype(np.float32), coords


def moozy_weights() -> dict[str, torch.Tensor]:
    ref = GOLDEN["encoders"]["moozy"]
    case = "case_transformer."
    state = fill({k: v for k, v in ref["shapes"].items() if not k.startswith(case)})
    # the script filled the two modules separately: the case transformer's keys without their prefix
    state.update(
        {
            case + k: v
            for k, v in fill(
                {k.removeprefix(case): v for k, v in ref["shapes"].items() if k.startswith(case)}
            ).items()
        }
    )
    slopes = torch.tensor(ref["slopes"], dtype=torch.float32)[:, None]
    return {k: slopes.clone() if k.endswith("pos_bias.slopes") else v for k, v in state.items()}


def test_moozy_layout_and_slopes() -> None:
    ref = GOLDEN["encoders"]["moozy"]
    model = create_slide_encoder("moozy", pretrained=False)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["shapes"]
    assert model.state_dict()["pos_bias.slopes"].reshape(-1).tolist() == pytest.approx(
        ref["slopes"], rel=1e-6
    )
    assert get_slide_encoder_config("moozy").n_params == ref["n_params"]


@pytest.mark.parametrize("fmt", ["safetensors", "payload"])
def test_moozy_equals_its_inference_path(fmt: str, tmp_path: Path) -> None:
    """One slide (MOOZY's one-slide case), its slide token, and a two-slide patient, as MOOZY computes them."""
    ref = GOLDEN["encoders"]["moozy"]
    state = moozy_weights()
    if fmt == "safetensors":
        path = tmp_path / "moozy.safetensors"
        save_file(state, str(path))
    else:  # the layout of MOOZY's moozy.pt: the two modules' state dicts and their configs
        path = tmp_path / "moozy.pt"
        n = ref["slide_encoder_n_tensors"]
        assert sum(not k.startswith("case_transformer.") for k in state) == n
        torch.save(
            {
                "teacher_slide_encoder": {
                    k: v for k, v in state.items() if not k.startswith("case_transformer.")
                },
                "case_transformer": {
                    k.removeprefix("case_transformer."): v
                    for k, v in state.items()
                    if k.startswith("case_transformer.")
                },
                "slide_encoder_config": {"d_model": 768, "n_layers": 6},
                "case_transformer_config": {"num_layers": 3},
            },
            path,
        )
    model = create_slide_encoder("moozy", weights=path)
    f1, c1 = moozy_inputs(GOLDEN["n_tiles"], 1)
    f2, c2 = moozy_inputs(23, 2)
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(model.embed(f1, c1, 448).numpy(), ref["output"], **tol)
    with torch.inference_mode():
        token = model.slide_token(torch.from_numpy(f1), torch.from_numpy(c1), 448)
    np.testing.assert_allclose(token.numpy(), ref["slide_cls"], **tol)
    patient = model.embed_patient([(f1, c1, 448), (f2, c2, 448)])
    np.testing.assert_allclose(patient.numpy(), ref["output_two_slides"], **tol)
    perm = np.random.default_rng(0).permutation(len(f1))  # the tiles' order does not matter
    np.testing.assert_allclose(model.embed(f1[perm], c1[perm], 448).numpy(), ref["output"], **tol)
