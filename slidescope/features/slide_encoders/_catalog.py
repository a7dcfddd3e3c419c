"""The built-in slide encoders as data (no torch): configs and where their builders live.

Sources of the numbers (tile geometry: TRIDENT's README table of slide encoders and the publishers' READMEs;
sizes: the publishers' code, recorded in tests/golden/trident_slide_layouts.json):

* FEATHER-24K: mahmoodlab/MIL-Lab ``abmil/base.yaml`` on CONCH v1.5 (512 px at 20x), UNI2-h (256 px at 20x),
  UNI (256 px at 20x); hub ``MahmoodLab/abmil.base.<encoder>.pc108-24k`` (``model.safetensors``), gated.
* MADELEINE: CONCH (v1) at 10x, 256 px (its README); hub ``MahmoodLab/madeleine`` (``model.pt``), gated.
* CHIEF: CHIEF-CTransPath at 10x, 256 px; weights on the authors' Google Drive (``CHIEF_pretraining.pth``).
* MOOZY: Lunit ViT-S/8 (``lunit_vit_small_patch8_dino``) at 224 px and 20x (``moozy.encoding``); hub
  ``AtlasAnalyticsLab/MOOZY`` (``moozy.pt``), CC-BY-NC-SA-4.0 (its model card).
* Prov-GigaPath (slide): its own tile encoder ``gigapath`` at 256 px and 20x (its README); hub
  ``prov-gigapath/prov-gigapath`` (``slide_encoder.pth``), Apache-2.0, gated; sizes in
  tests/golden/gigapath_slide.json.
* PRISM, TITAN: the published slide-text models of :mod:`slidescope.vlm.published`, loaded by their
  publishers' code (their builder lives in :mod:`slidescope.vlm.published_slide`).
"""

from __future__ import annotations

from ._config import SlideEncoderConfig

__all__ = ["BUILTINS"]

_MODELS = "slidescope.features.slide_encoders._models:build"
_PUBLISHED = "slidescope.vlm.published_slide:build_published_slide_encoder"
_GIGAPATH = "slidescope.features.slide_encoders._gigapath:build"
_GOLDEN = "tests/golden/trident_slide_layouts.json"
_FEATHER_LICENCE = "CC-BY-NC-ND-4.0"  # MIL-Lab LICENSE and README; the models' own terms on the hub


def _feather(
    name: str, encoder: str, hub_encoder: str, dim: int, tile: int, n_params: int
) -> SlideEncoderConfig:
    hub = f"MahmoodLab/abmil.base.{hub_encoder}.pc108-24k"
    return SlideEncoderConfig(
        name=name,
        family="abmil-mil-lab",
        embed_dim=512,
        patch_encoders=(encoder,),
        patch_dim=dim,
        tile_size=tile,
        mpp=0.5,
        hub_id=hub,
        weights_file="model.safetensors",
        weights_url=f"https://huggingface.co/{hub}",
        license=_FEATHER_LICENCE,
        license_url=f"https://huggingface.co/{hub}",
        gated=True,
        layout=f"derived: MIL-Lab ABMILModel (the class the hub repository's auto_map names), {_GOLDEN}",
        n_params=n_params,
        kwargs=(("embed_dim", 512), ("attn_dim", 384), ("dropout", 0.25)),
        description=f"FEATHER-24K (Shao et al. 2025): gated ABMIL supervised on 108 cancer types (24k slides) "
        f"over {encoder} tiles; 512-d.",
    )


BUILTINS: list[tuple[SlideEncoderConfig, str]] = [
    (
        SlideEncoderConfig(
            name="mean",
            family="mean",
            embed_dim=None,
            license="none (no weights)",
            layout="no weights",
            n_params=0,
            weight_free=True,
            description="Mean of the tile embeddings of any patch encoder (TRIDENT's mean-* baselines); "
            "width = the patch encoder's.",
        ),
        _MODELS,
    ),
    (_feather("feather-conch-v1.5", "conch-v1.5", "conch_v15", 768, 512, 788_097), _MODELS),
    (_feather("feather-uni2", "uni2-h", "uni_v2", 1536, 256, 1_181_313), _MODELS),
    (_feather("feather-uni", "uni", "uni", 1024, 256, 919_169), _MODELS),
    (
        SlideEncoderConfig(
            name="madeleine",
            family="madeleine",
            embed_dim=512,
            patch_encoders=("conch-v1",),
            patch_dim=512,
            tile_size=256,
            mpp=1.0,
            hub_id="MahmoodLab/madeleine",
            weights_file="model.pt",
            weights_url="https://huggingface.co/MahmoodLab/madeleine",
            license="CC-BY-NC-ND-4.0",
            license_url="https://huggingface.co/MahmoodLab/madeleine",
            gated=True,
            layout="derived: MADELEINE create_model with its training defaults (4 heads; the hub's "
            f"model_config.json not read), {_GOLDEN}",
            n_params=4_996_740,
            kwargs=(("hidden", 512), ("heads", 4), ("attn_hidden", 512), ("token_dim", 128)),
            description="MADELEINE (Jaume et al. 2024): multi-head gated ABMIL over CONCH (v1) tiles at 10x, "
            "pretrained by aligning H&E with IHC stains of breast and kidney slides; 512-d.",
        ),
        _MODELS,
    ),
    (
        SlideEncoderConfig(
            name="chief",
            family="chief",
            embed_dim=768,
            patch_encoders=("chief-ctranspath",),
            patch_dim=768,
            tile_size=256,
            mpp=1.0,
            weights_file="CHIEF_pretraining.pth",
            weights_url="https://github.com/hms-dbmi/CHIEF (weights: the authors' Google Drive folder)",
            license="GPLv3, non-commercial academic use (weights on request)",
            license_url="https://github.com/hms-dbmi/CHIEF",
            layout=f"derived: CHIEF models/CHIEF.py CHIEF(size_arg='small') built by TRIDENT, {_GOLDEN}",
            n_params=1_199_624,
            kwargs=(
                ("hidden", 512),
                ("attn_hidden", 256),
                ("n_classes", 2),
                ("organs", 19),
                ("text_dim", 768),
            ),
            description="CHIEF (Wang et al. 2024): gated-attention aggregator over CHIEF-CTransPath tiles at "
            "10x, weakly supervised on 60k slides of 19 sites; 768-d attention-weighted tile mean.",
        ),
        _MODELS,
    ),
    (
        SlideEncoderConfig(
            name="moozy",
            family="moozy",
            embed_dim=768,
            patch_encoders=("lunit-dino-vits8",),
            patch_dim=384,
            tile_size=224,
            mpp=0.5,
            needs_coords=True,
            hub_id="AtlasAnalyticsLab/MOOZY",
            weights_file="moozy.pt",
            weights_url="https://huggingface.co/AtlasAnalyticsLab/MOOZY",
            license="CC-BY-NC-SA-4.0",
            license_url="https://github.com/AtlasAnalyticsLab/MOOZY/blob/main/MODEL_CARD.md",
            layout="derived: MOOZY MOOZYSlideEncoder + CaseAggregator at the model card's sizes (the "
            f"checkpoint's own config not read), {_GOLDEN}",
            n_params=64_099_668,
            patient_level=True,
            kwargs=(
                ("dim", 768),
                ("heads", 12),
                ("ffn", 3072),
                ("layers", 6),
                ("registers", 4),
                ("case_layers", 3),
            ),
            description="MOOZY (2025): ViT with 2-D ALiBi over Lunit ViT-S/8 tiles (224 px, 20x) and a case "
            "transformer over a patient's slides; 768-d slide (one-slide case) and patient embeddings.",
        ),
        _MODELS,
    ),
    (
        SlideEncoderConfig(
            name="gigapath-slide",
            family="gigapath",
            embed_dim=768,
            patch_encoders=("gigapath",),
            patch_dim=1536,
            tile_size=256,
            mpp=0.5,
            needs_coords=True,
            hub_id="prov-gigapath/prov-gigapath",
            weights_file="slide_encoder.pth",
            weights_url="https://huggingface.co/prov-gigapath/prov-gigapath",
            license="Apache-2.0",
            license_url="https://huggingface.co/prov-gigapath/prov-gigapath",
            gated=True,
            layout="derived: prov-gigapath create_model('gigapath_slide_enc12l768d') as TRIDENT builds it, "
            "run on CPU with exact attention for flash-attn, tests/golden/gigapath_slide.json",
            n_params=86_330_880,
            kwargs=(
                ("dim", 768),
                ("depth", 12),
                ("heads", 16),
                ("ffn", 3072),
                ("segment_length", (1024, 5792, 32768, 185363, 1048576)),
                ("dilated_ratio", (1, 2, 4, 8, 16)),
                ("grid", 1000),
                ("layer", 11),
            ),
            description="Prov-GigaPath slide encoder (Xu et al. 2024): LongNet ViT (dilated attention) over "
            "GigaPath tiles at 20x with 2-D sin-cos positions; TRIDENT's rule: layer 11 of 12, tile mean, "
            "LayerNorm; 768-d.",
        ),
        _GIGAPATH,
    ),
    (
        SlideEncoderConfig(
            name="prism",
            family="published",
            embed_dim=1280,
            patch_encoders=("virchow",),
            patch_dim=2560,
            tile_size=224,
            mpp=0.5,
            hub_id="paige-ai/Prism",
            weights_url="https://huggingface.co/paige-ai/Prism",
            license="CC-BY-NC-ND-4.0",
            license_url="https://huggingface.co/paige-ai/Prism",
            gated=True,
            requires_remote_code=True,
            layout="publisher's code (trust_remote_code)",
            description="PRISM (Shaikovski et al. 2024): Perceiver over Virchow tiles, CoCa-trained with "
            "reports; 1280-d (slidescope.vlm.published).",
        ),
        _PUBLISHED,
    ),
    (
        SlideEncoderConfig(
            name="titan",
            family="published",
            embed_dim=768,
            patch_encoders=("conch-v1.5",),
            patch_dim=768,
            tile_size=512,
            mpp=0.5,
            needs_coords=True,
            hub_id="MahmoodLab/TITAN",
            weights_url="https://huggingface.co/MahmoodLab/TITAN",
            license="CC-BY-NC-ND-4.0",
            license_url="https://huggingface.co/MahmoodLab/TITAN",
            gated=True,
            requires_remote_code=True,
            layout="publisher's code (trust_remote_code)",
            description="TITAN (Ding et al. 2024): ViT with 2-D ALiBi over the grid of CONCH v1.5 tiles; "
            "768-d (slidescope.vlm.published).",
        ),
        _PUBLISHED,
    ),
]
