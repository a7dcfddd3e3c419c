"""More built-in patch encoders as data: ViT-family patch encoders (timm builds; files published in timm,
transformers or DINOv2 ``torch.hub`` layout). No torch, timm or transformers is imported here (see
``_catalog``).

Sources: TRIDENT (mahmoodlab/TRIDENT @ a91fa84, ``trident/patch_encoder_models/load.py``) for the builds,
preprocessing and precision; LazySlide's ``lazyslide_models`` (rendeirolab/lazyslide-models @ 0127beb) and the
model cards for licences, gating and pooling. ``layout_source`` says how each state-dict layout was checked:
"TRIDENT a91fa84 strict load" (tests/golden/trident_layouts.json, built by running TRIDENT's own loader) or
"derived: ..." (the hub config.json is not readable offline: the architecture comes from the model card and
reference code named there).

=================  =======================================  =========  ==========================
name               architecture                             embed_dim  pooling
=================  =======================================  =========  ==========================
kaiko-vits8        ViT-S/8 (DINO)                           384        CLS
kaiko-vits16       ViT-S/16 (DINO)                          384        CLS
kaiko-vitb8        ViT-B/8 (DINO)                           768        CLS
kaiko-vitl14       ViT-L/14 DINOv2, 4 registers, pos @ 518  1024       CLS
lunit-dino-vits16  ViT-S/16 (DINO)                          384        CLS
gpfm               ViT-L/14 DINOv2                          1024       CLS
openmidnight       ViT-g/14 DINOv2, SwiGLU, 4 registers     1536       CLS
midnight-12k       ViT-g/14 DINOv2, SwiGLU                  3072       CLS ++ mean(patch tokens)
hibou-b            ViT-B/14 DINOv2, SwiGLU, 4 registers     768        CLS (pooler_output)
hibou-l            ViT-L/14 DINOv2, SwiGLU, 4 registers     1024       CLS (pooler_output)
phikon             ViT-B/16 (iBOT), LayerNorm eps 1e-12     768        CLS
genbio-pathfm      DINOv3-style ViT-g/16 per RGB channel    4608       CLS(R) ++ CLS(G) ++ CLS(B)
=================  =======================================  =========  ==========================
"""

from __future__ import annotations

from ._config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KAIKO_MEAN,
    KAIKO_STD,
    LUNIT_MEAN,
    LUNIT_STD,
    SWIGLU,
    EncoderConfig,
    ImportRef,
)

__all__ = ["ZOO_VIT", "ZOO_VIT_CONFIGS", "HIBOU_MEAN", "HIBOU_STD"]

_TRIDENT = "TRIDENT a91fa84 strict load"
#: Hibou normalisation (TRIDENT utils/constants.py; LazySlide hibou.py; the hub preprocessor config)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)

_TIMM = ImportRef("slidescope.features.encoders.timm_models:build_preset")
_CONVERTED = ImportRef("slidescope.features.encoders.hf_vit:build_converted")


def _kaiko(
    name: str, arch: str, embed_dim: int, what: str, note: str = "", **kwargs: object
) -> EncoderConfig:
    """A kaiko.ai model as TRIDENT builds it: ``timm.create_model(arch, num_classes=0, img_size=...,
    dynamic_img_size=True)`` from the 1aurent timm port ``<arch>.kaiko_ai_towards_large_pathology_fms``."""
    hub_id = f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms"
    return EncoderConfig(
        name=name,
        architecture=f"timm:{arch}",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True, **kwargs},
        embed_dim=embed_dim,
        hub_id=hub_id,
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=KAIKO_MEAN,
        std=KAIKO_STD,
        interpolation="bilinear",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        num_register_tokens=4 if "reg4" in arch else 0,
        license="kaiko-non-commercial",
        license_url=f"https://huggingface.co/{hub_id}",
        gated=False,
        description=f"kaiko.ai {what} (Towards Large-Scale Training of Pathology FMs, 2024), timm port of the "
        "published weights; Resize(224) + CenterCrop(224) bilinear, mean/std 0.5; CLS token (timm's pooled "
        f"output, as TRIDENT's forward).{note}",
        layout_source=_TRIDENT,
    )


_MIDNIGHT_KW = {
    "img_size": 224,
    "patch_size": 14,
    "embed_dim": 1536,
    "depth": 40,
    "num_heads": 24,
    "init_values": 1e-5,
    "mlp_ratio": 5.33334,
    "num_classes": 0,
    **SWIGLU,
}

ZOO_VIT_CONFIGS: tuple[EncoderConfig, ...] = (
    _kaiko("kaiko-vits8", "vit_small_patch8_224", 384, "ViT-S/8"),
    _kaiko("kaiko-vits16", "vit_small_patch16_224", 384, "ViT-S/16"),
    _kaiko("kaiko-vitb8", "vit_base_patch8_224", 768, "ViT-B/8"),
    _kaiko(
        "kaiko-vitl14",
        "vit_large_patch14_reg4_dinov2",
        1024,
        "ViT-L/14 DINOv2 with 4 registers",
        " Built at 518 px like the checkpoint (37x37 positions) and run at 224: timm resamples the positions "
        "at every forward pass (dynamic_img_size), as in TRIDENT.",
        img_size=518,
    ),
    EncoderConfig(
        name="lunit-dino-vits16",
        architecture="timm:vit_small_patch16_224",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=384,
        hub_id="1aurent/vit_small_patch16_224.lunit_dino",
        weights_file="model.safetensors",
        input_size=224,
        mean=LUNIT_MEAN,
        std=LUNIT_STD,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        license="lunit-non-commercial",
        license_url="https://github.com/lunit-io/benchmark-ssl-pathology/blob/main/LICENSE",
        gated=False,
        description="Lunit DINO ViT-S/16 (Kang et al., CVPR 2023), timm port of the official weights (the hub id "
        "LazySlide uses; TRIDENT ships only the ViT-S/8); same preprocessing as lunit-dino-vits8; CLS.",
        layout_source="derived: timm vit_small_patch16_224, the architecture of the timm port named by hub_id "
        "(LazySlide lunit.py 0127beb); its sibling lunit-dino-vits8 is TRIDENT-checked",
    ),
    EncoderConfig(
        name="gpfm",
        architecture="timm:vit_large_patch14_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=1024,
        hub_id="majiabo/GPFM",
        weights_file="GPFM.pth",
        input_size=224,
        resize_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        license="CC-BY-NC-ND-4.0",
        license_url="https://huggingface.co/majiabo/GPFM",
        gated=False,
        description="GPFM (Ma et al., Nat Biomed Eng 2025): ViT-L/14 DINOv2 distilled from several expert "
        "models; timm layout, 224 px input (Resize(224) bicubic), ImageNet mean/std, fp16; CLS token. The card "
        "gives no mpp: 0.5 µm/px (20x) as TRIDENT runs it.",
        layout_source=_TRIDENT,
    ),
    EncoderConfig(
        name="openmidnight",
        architecture="timm:vit_giant_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "num_classes": 0},
        embed_dim=1536,
        hub_id="SophontAI/OpenMidnight",
        weights_file="teacher_checkpoint_load.pt",
        input_size=224,
        resize_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        num_register_tokens=4,
        license="Apache-2.0",
        license_url="https://huggingface.co/SophontAI/OpenMidnight",
        gated=True,
        description="OpenMidnight (Sophont / MedARC): open replication of Midnight-12k, DINOv2 ViT-g/14 with "
        "SwiGLU and 4 registers trained at 224 px; the published teacher checkpoint is in DINOv2 torch.hub "
        "layout (converted to timm when loading); Resize(224) bilinear, ImageNet mean/std, fp16; CLS token "
        "(the hub model's output, x_norm_clstoken).",
        layout_source=f"{_TRIDENT} (DINOv2 hub dinov2_vitg14_reg, facebookresearch/dinov2, converted)",
    ),
    EncoderConfig(
        name="midnight-12k",
        architecture="timm:vit_giant_patch14_dinov2",
        kwargs=_MIDNIGHT_KW,
        embed_dim=3072,
        hub_id="kaiko-ai/midnight",
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=KAIKO_MEAN,
        std=KAIKO_STD,
        interpolation="bilinear",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        license="MIT",
        license_url="https://huggingface.co/kaiko-ai/midnight",
        gated=False,
        description="Midnight-12k (kaiko.ai, Karasikov et al. 2025): DINOv2 ViT-g/14 trained on 12k TCGA "
        "slides, published as a transformers Dinov2Model (converted to timm when loading; positions resampled "
        "to 224 as transformers does); Resize(224) + CenterCrop(224), mean/std 0.5, fp16. concat(CLS, mean of "
        "the patch tokens) = 3072, the card's recommendation (TRIDENT's default is the CLS token alone).",
        layout_source="derived: facebook/dinov2-giant architecture (SwiGLU, no registers) per the card and "
        "TRIDENT/LazySlide's AutoModel use; the hub config.json was not readable offline; "
        "transformers' own model of that config converts to exactly this layout (test_zoo_vit)",
    ),
    EncoderConfig(
        name="hibou-b",
        architecture="timm:vit_base_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3334, "num_classes": 0, **SWIGLU},
        embed_dim=768,
        hub_id="histai/hibou-b",
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        num_register_tokens=4,
        license="Apache-2.0",
        license_url="https://huggingface.co/histai/hibou-b",
        gated=True,
        description="Hibou-B (HistAI, Nechaev et al. 2024): DINOv2 ViT-B/14 with SwiGLU and 4 registers, "
        "published as a transformers Dinov2-with-registers model (trust_remote_code; converted to timm when "
        "loading); Resize(224) bicubic, Hibou mean/std; CLS token (pooler_output, as TRIDENT/LazySlide).",
        layout_source="derived: HistAI/hibou build_model defaults (vit_base, patch 14, swiglufused, 4 "
        "registers, 224 px); the hub config.json was not readable offline; "
        "transformers' own model of that config converts to exactly this layout (test_zoo_vit)",
    ),
    EncoderConfig(
        name="hibou-l",
        architecture="timm:vit_large_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.34375, "num_classes": 0, **SWIGLU},
        embed_dim=1024,
        hub_id="histai/hibou-L",
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        num_register_tokens=4,
        license="Apache-2.0",
        license_url="https://huggingface.co/histai/hibou-L",
        gated=True,
        description="Hibou-L (HistAI): DINOv2 ViT-L/14 with SwiGLU and 4 registers, transformers "
        "Dinov2-with-registers file (converted to timm when loading); Resize(224) bicubic, Hibou mean/std; CLS "
        "token (pooler_output, as TRIDENT/LazySlide).",
        layout_source="derived: HistAI/hibou build_model defaults with vit_large (SwiGLU hidden "
        "(int(4096*2/3)+7)//8*8 = 2736), 4 registers, 224 px; the hub config.json was not readable offline; "
        "transformers' own model of that config converts to exactly this layout (test_zoo_vit)",
    ),
    EncoderConfig(
        name="phikon",
        architecture="timm:vit_base_patch16_224",
        kwargs={
            "img_size": 224,
            "num_classes": 0,
            "norm_layer": ImportRef("slidescope.features.encoders.hf_vit:LayerNormEps12"),
        },
        embed_dim=768,
        hub_id="owkin/phikon",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        license="Owkin non-commercial licence",
        license_url="https://github.com/owkin/HistoSSLscaling/blob/main/LICENSE.txt",
        gated=False,
        description="Phikon (Owkin, Filiot et al. 2023): iBOT ViT-B/16 pretrained on 40M TCGA tiles (224 px at "
        "20x; beware of contamination on TCGA benchmarks); published as a transformers ViTModel (converted to "
        "timm when loading, LayerNorm eps 1e-12 kept); Resize(224) bilinear, ImageNet mean/std; CLS of "
        "last_hidden_state (add_pooling_layer=False), as TRIDENT.",
        layout_source="derived: transformers ViTConfig ViT-B/16 (google/vit-base layout; TRIDENT builds "
        "ViTModel.from_pretrained(add_pooling_layer=False)); the hub config.json was not readable offline; "
        "transformers' own model of that config converts to exactly this layout (test_zoo_vit)",
    ),
)

_GENBIO = EncoderConfig(
    name="genbio-pathfm",
    architecture="slidescope:genbio_pathfm (DINOv3-style ViT-g/16, 1 input channel, RoPE, 4 storage tokens)",
    kwargs={
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "patch_size": 16,
        "ffn_ratio": 4.0,
        "n_storage_tokens": 4,
        "rope_base": 100.0,
    },
    embed_dim=4608,
    hub_id="genbio-ai/genbio-pathfm",
    weights_file="model.pth",
    input_size=224,
    resize_size=224,
    mean=(0.697, 0.575, 0.728),
    std=(0.188, 0.240, 0.187),
    interpolation="bilinear",
    tile_size=224,
    mpp=0.5,
    precision="bf16",
    pooling="cls",
    license="GenBio AI Community License (non-commercial)",
    license_url="https://huggingface.co/genbio-ai/genbio-pathfm/blob/main/LICENSE.txt",
    gated=False,
    description="GenBio-PathFM (GenBio AI, Kapse et al. 2026): DINOv3-style ViT-g/16 (1.1B parameters) run "
    "on each RGB channel as a grey image; concat(CLS of R, G, B) = 3 x 1536 = 4608. Resize(224) bilinear, "
    "GenBio mean/std, bf16 (TRIDENT); the rotary positions are computed in bfloat16 as in the reference.",
    layout_source=f"{_TRIDENT} (GenBioPathFMInference's VisionTransformer, run)",
)

_CONVERTED_NAMES = frozenset({"openmidnight", "midnight-12k", "hibou-b", "hibou-l", "phikon"})

#: (config, builder) pairs, appended to ``_catalog.BUILTINS``
ZOO_VIT: tuple[tuple[EncoderConfig, ImportRef], ...] = (
    *((c, _CONVERTED if c.name in _CONVERTED_NAMES else _TIMM) for c in ZOO_VIT_CONFIGS),
    (_GENBIO, ImportRef("slidescope.features.encoders.genbio:build_genbio_pathfm")),
)
