"""slidescope's Perceiver against PRISM's own slide-encoder code (tests/golden/make_prism_perceiver.py).

The golden file holds the weights (under the names of a PRISM checkpoint), inputs and outputs of Paige's
``PerceiverResampler`` called through ``Prism.slide_representations``; here they go through the path users
get: a directory with ``config.json`` (``perceiver_config``) and ``model.safetensors``, read by
:meth:`PerceiverSlideEncoder.from_prism` (so :func:`convert_prism_state_dict` and the config reading).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidescope.vlm.slide_encoder import (
    PerceiverSlideEncoder,
    PerceiverSlideEncoderConfig,
    convert_prism_state_dict,
)

GOLDEN = Path(__file__).parents[1] / "golden" / "prism_perceiver.npz"
TOL = 1e-5  # float32, same weights: the attention is summed in another order (and streamed in chunks)
OUTPUTS = ("image_embedding", "image_latents")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _prism_dir(golden: dict[str, np.ndarray], case: str, root: Path) -> Path:
    """A directory laid out like ``paige-ai/Prism`` holding the golden case's resampler."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    prefix = f"{case}/w/"
    weights = {
        k[len(prefix) :]: torch.from_numpy(v.astype(np.float32))
        for k, v in golden.items()
        if k.startswith(prefix)
    }
    weights["text_to_latents.to_latents.weight"] = torch.zeros(4, 4)  # the rest of PRISM: must be ignored
    save_file(weights, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "prism", "perceiver_config": json.loads(str(golden[f"{case}/config"]))}
    (root / "config.json").write_text(json.dumps(config))
    return root


def _inputs(golden: dict[str, np.ndarray], case: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(golden[f"{case}/tiles"].astype(np.float32)),
        torch.from_numpy(golden[f"{case}/mask"]),
    )


def _max_diff(ours: dict[str, torch.Tensor], golden: dict[str, np.ndarray], key: str) -> float:
    return max(float((ours[o] - torch.from_numpy(golden[f"{key}/{o}"])).abs().max()) for o in OUTPUTS)


def test_golden_file_names_its_reference(golden: dict[str, np.ndarray]) -> None:
    provenance = json.loads(str(golden["provenance"]))
    assert provenance["repository"] == "https://github.com/DIAGNijmegen/unicorn_baseline"
    assert "paige-ai/Prism" in provenance["upstream"] and "slide_representations" in provenance["called"]
    assert len(provenance["commit"]) == 40 and provenance["script"] == "tests/golden/make_prism_perceiver.py"


@pytest.mark.parametrize("case", ["c64", "c2560"])
@pytest.mark.parametrize("chunk", [8192, 3])  # 3: the streamed cross-attention, with an all-padding chunk
def test_perceiver_reproduces_prism_slide_representations(
    golden: dict[str, np.ndarray], tmp_path: Path, case: str, chunk: int
) -> None:
    enc = PerceiverSlideEncoder.from_prism(_prism_dir(golden, case, tmp_path / "prism"), xattn_chunk=chunk)
    cfg = json.loads(str(golden[f"{case}/config"]))
    assert (enc.config.latent_seq, enc.config.latent_dim, enc.config.context_dim) == (
        cfg["latent_seq"],
        cfg["latent_dim"],
        cfg["context_dim"],
    )
    assert (enc.config.perceiver_depth, enc.config.transformer_depth, enc.config.mhsa_heads) == (8, 6, 8)
    tiles, mask = _inputs(golden, case)
    assert not bool(mask.all()) and bool(tiles[~mask].abs().sum() > 0)  # real padding, holding non-zeros
    with torch.no_grad():
        ours = enc(tiles, mask)
    for o in OUTPUTS:
        ref = torch.from_numpy(golden[f"{case}/bool_mask/{o}"])
        torch.testing.assert_close(ours[o], ref, atol=TOL, rtol=0)


def test_perceiver_reproduces_prism_on_one_slide_without_mask(
    golden: dict[str, np.ndarray], tmp_path: Path
) -> None:
    enc = PerceiverSlideEncoder.from_prism(_prism_dir(golden, "c64", tmp_path / "prism"))
    tiles, mask = _inputs(golden, "c64")
    with torch.no_grad():
        ours = enc(tiles[1:, : int(mask[1].sum())])
    assert _max_diff(ours, golden, "c64/single") < TOL


def test_converted_state_dict_loads_every_tensor(golden: dict[str, np.ndarray]) -> None:
    """``convert_prism_state_dict`` maps every resampler name of the checkpoint onto a parameter of ours."""
    state = {k[len("c64/w/") :]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("c64/w/")}
    cfg = {k: v for k, v in json.loads(str(golden["c64/config"])).items() if k != "model_type"}
    enc = PerceiverSlideEncoder(PerceiverSlideEncoderConfig(**cfg))
    result = enc.load_state_dict(convert_prism_state_dict(state), strict=False)
    assert not result.unexpected_keys
    loaded = {id(p) for k, p in enc.state_dict(keep_vars=True).items() if k not in result.missing_keys}
    assert all(id(p) in loaded for p in enc.parameters())  # shared modules are stored once, under one name
    torch.testing.assert_close(
        enc.state_dict()["layers.7.xattn.xattn.to_kv.weight"],  # layer 7 *is* layer 1's
        state["image_resampler.perceiver.layers.1.xattn.xattn.to_kv.weight"],
    )


def test_float_mask_is_read_as_boolean_unlike_prism(golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    """PRISM's docstring builds ``tile_mask`` with ``torch.zeros``/``ones``; its code passes a float mask to
    ``scaled_dot_product_attention`` as an additive bias (+1 on real tiles), so padding is *not* masked. Ours
    reads any mask as "True = real tile": the result is PRISM's boolean-mask one (documented deviation)."""
    enc = PerceiverSlideEncoder.from_prism(_prism_dir(golden, "c64", tmp_path / "prism"))
    tiles, mask = _inputs(golden, "c64")
    with torch.no_grad():
        ours = enc(tiles, mask.float())
    assert _max_diff(ours, golden, "c64/bool_mask") < TOL
    padded = {o: v[1:] for o, v in ours.items()}
    float_ref = {f"c64/float_mask/{o}": golden[f"c64/float_mask/{o}"][1:] for o in OUTPUTS}
    assert _max_diff(padded, float_ref, "c64/float_mask") > 1e-2
