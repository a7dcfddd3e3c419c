"""The built-in patch encoders as data: every config, and where its builder lives. No torch, timm or
transformers is imported here.

The registry (``_registry``) registers these configs with lazy builders (:class:`ImportRef`): naming,
listing and reading an encoder's config (``slidescope run --dry-run``, config-file checks, ``--help``) never
imports a model library; :func:`~slidescope.features.create_encoder` imports the family module (``timm_models``,
``clip``, ``conch``, ``conch_v1``, ``phikon``, ``he_descriptor``) when it builds the model. This is the one
place the configs are written; the family modules re-export theirs (``timm_models.PRESETS``, ``clip.PLIP``...).
"""

from __future__ import annotations

from dataclasses import replace

from ._config import (
    CLIP_MEAN,
    CLIP_STD,
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
from ._zoo_other import ZOO_OTHER
from ._zoo_vit import ZOO_VIT

__all__ = [
    "BUILTINS",
    "TIMM_PRESETS",
    "PLIP",
    "QUILTNET",
    "CONCH_V15",
    "CONCH_V1",
    "PHIKON_V2",
    "HE_DESCRIPTOR",
]

#: H-optimus-0 / H-optimus-1 / H0-mini normalisation (model cards; timm ``pretrained_cfg`` of the hub files)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

_NON_COMMERCIAL = "CC-BY-NC-ND-4.0"
_KAIKO_HUB = "1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms"

#: where the layouts of the timm presets TRIDENT builds were checked: its own encoder_factory, run outside
#: slidescope, recorded the model each strict load accepts (tests/golden/make_trident_layouts.py)
_TRIDENT_RUN = "TRIDENT a91fa84: encoder_factory run, strict load (tests/golden/trident_layouts.json)"


# --------------------------------------------------------------------------------------------------
# timm presets (timm_models.py). Kwargs are the published ones (docs/REFERENCE-models.md §4: TRIDENT's loaders, the model cards).
# --------------------------------------------------------------------------------------------------


_H_OPTIMUS_0 = EncoderConfig(
    name="h-optimus-0",
    layout_source=_TRIDENT_RUN,
    architecture="timm:vit_giant_patch14_reg4_dinov2",
    kwargs={
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": True,
    },
    embed_dim=1536,
    hub_id="bioptimus/H-optimus-0",
    weights_file="pytorch_model.bin",
    input_size=224,
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
    tile_size=224,
    mpp=0.5,
    precision="fp16",
    pooling="cls",
    num_register_tokens=4,
    license="Apache-2.0",
    license_url="https://huggingface.co/bioptimus/H-optimus-0",
    gated=True,
    description="H-optimus-0 (Bioptimus): ViT-g/14 DINOv2 with 4 registers (1.1B parameters), CLS token.",
)

TIMM_PRESETS: tuple[EncoderConfig, ...] = (
    EncoderConfig(
        name="uni",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_large_patch16_224",
        kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        embed_dim=1024,
        hub_id="MahmoodLab/uni",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/MahmoodLab/UNI",
        gated=True,
        description="UNI (Chen et al., Nat Med 2024): ViT-L/16 DINOv2-pretrained on 100k WSIs; 256 px @ 20x "
        "tiles "
        "resized to 224 (Resize(224) + CenterCrop(224)), CLS token.",
    ),
    EncoderConfig(
        name="uni2-h",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_giant_patch14_224",
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            **SWIGLU,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        embed_dim=1536,
        hub_id="MahmoodLab/UNI2-h",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="bf16",
        pooling="cls",
        num_register_tokens=8,
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/MahmoodLab/UNI2-h",
        gated=True,
        description="UNI2-h: ViT-H/14 with SwiGLU and 8 registers (681M parameters), CLS token.",
    ),
    EncoderConfig(
        name="virchow",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **SWIGLU,
        },
        embed_dim=2560,
        hub_id="paige-ai/Virchow",
        weights_file="pytorch_model.bin",
        input_size=224,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        license="Apache-2.0",
        license_url="https://huggingface.co/paige-ai/Virchow",
        gated=True,
        description="Virchow (Paige): ViT-H/14 with SwiGLU; concat(CLS, mean of patch tokens) = 2560, the "
        "tile "
        "embedding PRISM consumes.",
    ),
    EncoderConfig(
        name="virchow2",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **SWIGLU,
        },
        embed_dim=2560,
        hub_id="paige-ai/Virchow2",
        weights_file="pytorch_model.bin",
        input_size=224,
        interpolation="bicubic",
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        num_register_tokens=4,
        license=_NON_COMMERCIAL,
        license_url="https://huggingface.co/paige-ai/Virchow2",
        gated=True,
        description="Virchow2 (Paige): ViT-H/14 with SwiGLU and 4 registers; concat(CLS, mean of the patch "
        "tokens "
        "after the 4 registers) = 2560.",
    ),
    _H_OPTIMUS_0,
    replace(
        _H_OPTIMUS_0,
        name="h-optimus-1",
        layout_source=_TRIDENT_RUN,
        hub_id="bioptimus/H-optimus-1",
        license="other (H-optimus-1 access terms, see the model card)",
        license_url="https://huggingface.co/bioptimus/H-optimus-1",
        description="H-optimus-1 (Bioptimus): H-optimus-0's architecture, access on request; CLS token.",
    ),
    EncoderConfig(
        name="h0-mini",
        architecture="timm:vit_base_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True, **SWIGLU},
        embed_dim=768,
        hub_id="bioptimus/H0-mini",
        weights_file="pytorch_model.bin",
        input_size=224,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        tile_size=224,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        num_register_tokens=4,
        license="CC-BY-NC-ND-4.0 (see the model card)",
        license_url="https://huggingface.co/bioptimus/H0-mini",
        gated=True,
        description="H0-mini (Bioptimus): ViT-B/14 with 4 registers and SwiGLU, distilled from H-optimus-0. "
        "CLS token (768), TRIDENT's and eva's default; the card's example also shows concat(CLS, mean patch) "
        "= 1536.",
    ),
    EncoderConfig(
        name="gigapath",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_giant_patch14_dinov2",
        kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        embed_dim=1536,
        hub_id="prov-gigapath/prov-gigapath",
        weights_file="pytorch_model.bin",
        input_size=224,
        resize_size=256,
        interpolation="bicubic",
        tile_size=256,
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        license="Apache-2.0",
        license_url="https://huggingface.co/prov-gigapath/prov-gigapath",
        gated=True,
        description="Prov-GigaPath tile encoder: ViT-g DINOv2 at patch 16 (1.1B parameters); 256 px @ 20x -> "
        "Resize(256, bicubic) + CenterCrop(224); CLS token (input of the GigaPath slide encoder).",
    ),
    EncoderConfig(
        name="lunit-dino-vits8",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_small_patch8_224",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=384,
        hub_id="1aurent/vit_small_patch8_224.lunit_dino",
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
        license_url="https://huggingface.co/1aurent/vit_small_patch8_224.lunit_dino",
        gated=False,
        description="Lunit DINO ViT-S/8 (Kang et al., CVPR 2023), timm port of the official weights; CLS.",
    ),
    EncoderConfig(
        name="kaiko-vitb16",
        layout_source=_TRIDENT_RUN,
        architecture="timm:vit_base_patch16_224",
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        embed_dim=768,
        hub_id=_KAIKO_HUB,
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        mean=KAIKO_MEAN,
        std=KAIKO_STD,
        tile_size=224,
        mpp=0.5,
        precision="fp32",
        pooling="cls",
        license="kaiko-non-commercial",
        license_url=f"https://huggingface.co/{_KAIKO_HUB}",
        gated=False,
        description="kaiko.ai ViT-B/16 (Towards Large-Scale Training of Pathology FMs, 2024), timm port; CLS "
        "token as in kaiko's torch.hub model, eva and TRIDENT (CLS+mean is Midnight's recommendation, not "
        "this model's).",
    ),
    EncoderConfig(
        name="resnet50-trunc",
        layout_source=_TRIDENT_RUN,
        architecture="timm:resnet50",
        kwargs={"features_only": True, "out_indices": (3,)},
        embed_dim=1024,
        hub_id="timm/resnet50.tv_in1k",
        weights_file="model.safetensors",
        input_size=224,
        resize_size=224,
        tile_size=256,
        mpp=0.5,
        precision="fp32",
        pooling="mean",
        license="BSD-3-Clause (torchvision weights)",
        license_url="https://huggingface.co/timm/resnet50.tv_in1k",
        gated=False,
        description="CLAM's baseline: ImageNet ResNet-50 (torchvision weights) truncated after layer3, "
        "global "
        "average pool -> 1024.",
    ),
)


# --------------------------------------------------------------------------------------------------
# CLIP family (clip.py), CONCH v1.5 (conch.py), CONCH v1 (conch_v1.py), Phikon-v2 (phikon.py)
# --------------------------------------------------------------------------------------------------

PLIP = EncoderConfig(
    name="plip",
    architecture="transformers:CLIPVisionModelWithProjection (CLIP ViT-B/32 image tower of CLIPModel)",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
    },
    hub_id="vinid/plip",
    weights_file="pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="research use only (no licence file; model card: CLIP terms, deployed use out of scope)",
    license_url="https://huggingface.co/vinid/plip",
    gated=False,
    description=(
        "PLIP (Huang et al., Nat Med 2023): OpenAI CLIP ViT-B/32 fine-tuned on OpenPath (208k pathology "
        "image-text pairs from medical Twitter, mixed magnifications); 512-d projected image embedding "
        "(get_image_features, not L2-normalised). No native mpp: 224 px at 0.5 µm/px chosen; CLIP "
        "preprocessing (bicubic 224 + centre crop, OpenAI mean/std)."
    ),
)

QUILTNET = EncoderConfig(
    name="quiltnet",
    layout_source="derived: open_clip_config.json of the hub commit 88c3e9f (tests/features/layouts/quiltnet.json)",
    architecture="open_clip:ViT-B-32 image tower",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "quick_gelu": False,
    },
    hub_id="wisdomik/QuiltNet-B-32",
    weights_file="open_clip_pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="MIT",
    license_url="https://huggingface.co/wisdomik/QuiltNet-B-32",
    gated=False,
    description=(
        "QuiltNet-B-32 (Ikezogwo et al., NeurIPS 2023): open_clip ViT-B/32 trained on Quilt-1M "
        "(histopathology frames from YouTube plus other sources, mixed magnifications); 512-d projected "
        "image embedding (encode_image, not L2-normalised). Architecture from the published "
        "open_clip_config.json (GELU). No native mpp: 224 px at 0.5 µm/px chosen; CLIP preprocessing."
    ),
)


CONCH_V15 = EncoderConfig(
    name="conch-v1.5",
    layout_source="derived: TRIDENT conchv1_5.py read, not run (tests/features/layouts/conch-v1.5.json)",
    architecture="conch-v1.5: ViT-L/16 trunk (timm VisionTransformer) + CoCa AttentionalPooler(768) + LN",
    embed_dim=768,
    input_size=448,
    resize_size=448,
    kwargs={
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "init_values": 1e-6,
        "pooler_dim": 768,
        "pooler_heads": 8,
        "pooler_queries": 1,
    },
    hub_id="MahmoodLab/conchv1_5",
    weights_file="pytorch_model_vision.bin",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    tile_size=512,
    mpp=0.5,
    precision="fp16",
    pooling="pooler",
    license="CC-BY-NC-ND-4.0",
    license_url="https://huggingface.co/MahmoodLab/conchv1_5",
    gated=True,
    description=(
        "CONCH v1.5 (Mahmood Lab; the patch encoder of TITAN): ViT-L/16 image tower of a CoCa "
        "vision-language model, 768-d attentional-pooled contrastive embedding (LayerNormed, not "
        "projected further, not L2-normalised). Tiles 512 px at 0.5 µm/px (20x), resized to 448 "
        "(bilinear) + centre crop 448, ImageNet normalisation, fp16."
    ),
)


CONCH_V1 = EncoderConfig(
    name="conch-v1",
    layout_source="mahmoodlab/CONCH 141cc09: factory.create_model run (tests/golden/conch_v1_layout.json)",
    architecture=(
        "conch-v1: CoCa image tower: timm VisionTransformer ViT-B/16 at 448 + attentional pooler "
        "(512, 1 query, nn.MultiheadAttention) + LN"
    ),
    embed_dim=512,
    input_size=448,
    resize_size=448,
    kwargs={
        "embed_dim": 512,
        "image_size": 448,
        "patch_size": 16,
        "width": 768,
        "layers": 12,
        "num_heads": 12,
        "mlp_ratio": 4.0,
        "attn_pooler_heads": 8,
        "n_queries_contrast": 1,
    },
    hub_id="MahmoodLab/conch",
    weights_file="pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=512,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="CC-BY-NC-ND-4.0",
    license_url="https://huggingface.co/MahmoodLab/conch",
    gated=True,
    description=(
        "CONCH v1 (Lu et al., Nat Med 2024; Mahmood Lab): image tower of a CoCa vision-language model, ViT-B/16 "
        "at 448 px; 512-d attentional-pooled feature before the contrastive projection (encode_image with "
        "proj_contrast=False, normalize=False; as TRIDENT's conch_v1). Tiles 512 px at 0.5 µm/px (20x), bicubic "
        "resize 448 + centre crop 448, OpenAI CLIP mean/std, fp32. Text tower: create_clip_text_tower('conch-v1')."
    ),
)


PHIKON_V2 = EncoderConfig(
    name="phikon-v2",
    architecture="transformers:Dinov2Model (ViT-L/16)",
    embed_dim=1024,
    input_size=224,
    resize_size=224,
    kwargs={
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "mlp_ratio": 4,
        "patch_size": 16,
        "image_size": 224,
        "num_channels": 3,
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    },
    hub_id="owkin/phikon-v2",
    weights_file="model.safetensors",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="cls",
    license="Owkin non-commercial licence",
    license_url="https://huggingface.co/owkin/phikon-v2/blob/main/LICENSE.pdf",
    gated=False,
    description=(
        "Phikon-v2 (Owkin): DINOv2 ViT-L/16 (no registers) pretrained on PANCAN-XL (456M tiles from "
        "TCGA, CPTAC, GTEx and other public cohorts: beware of contamination on TCGA benchmarks); "
        "1024-d CLS of last_hidden_state. Tiles 224 px at 0.5 µm/px (20x), ImageNet normalisation."
    ),
)


# the weight-free H&E descriptor (he_descriptor.py)
HE_DESCRIPTOR = EncoderConfig(
    name="he-descriptor",
    architecture="slidescope:he_descriptor",
    embed_dim=98,  # len(he_descriptor.FEATURE_NAMES); HEDescriptor refuses another width
    input_size=224,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    interpolation="bilinear",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="none",
    license="Apache-2.0 (slidescope; no weights)",
    weight_free=True,
    description=(
        "Weight-free H&E descriptor (not a foundation model): colour deconvolution, nuclear blob counts "
        "and texture energies, 98 standardised features. Runs anywhere, offline."
    ),
)


def _ref(module: str, builder: str) -> ImportRef:
    return ImportRef(f"slidescope.features.encoders.{module}:{builder}")


#: (config, builder) of every built-in encoder; a builder is imported when its model is first built
BUILTINS: tuple[tuple[EncoderConfig, ImportRef], ...] = (
    (HE_DESCRIPTOR, _ref("he_descriptor", "HEDescriptor")),
    *((c, _ref("timm_models", "build_preset")) for c in TIMM_PRESETS),
    (PLIP, _ref("clip", "build_hf_clip_image")),
    (QUILTNET, _ref("clip", "build_open_clip_image")),
    (CONCH_V15, _ref("conch", "build_conch_v15")),
    (CONCH_V1, _ref("conch_v1", "build_conch_v1")),
    (PHIKON_V2, _ref("phikon", "build_dinov2")),
    *ZOO_VIT,
    *ZOO_OTHER,
)
