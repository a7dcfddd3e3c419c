"""More built-in patch encoders as data: CTransPath-style Swin (``ctranspath``) and CLIP-family image towers
(``clip``: QuiltNet B-16, QuiltNet B-16-PMB, BiomedCLIP). No torch, timm or transformers is imported here
(see ``_catalog``).

==================  ==============================================  =========  ==============================
name                architecture                                    embed_dim  output
==================  ==============================================  =========  ==============================
ctranspath          Swin-T + conv stem (timm 0.5.4 layout on disk)  768        mean of last-stage tokens
chief-ctranspath    the same, CHIEF's weights                       768        mean of last-stage tokens
quiltnet-b16        open_clip ViT-B-16                              512        projected image feature
quiltnet-b16-pmb    open_clip timm ViT-B/16 trunk + linear proj     512        projected image feature
biomedclip          open_clip timm ViT-B/16 trunk + linear proj     512        projected image feature
musk                BEiT-3 large, vision experts (``musk``)         1024       CLS after final LayerNorm
musk-ms             the same, MUSK's multi-scale ``ms_aug``         2048       CLS + mean CLS of 2x quarters
==================  ==============================================  =========  ==============================

Text towers (MI-Zero): ``quiltnet-b16`` and ``biomedclip`` (``create_clip_text_tower``); not
``quiltnet-b16-pmb`` (its text projection type is not known without the hub config).

MUSK is our own BEiT-3 vision path (``musk.py``): neither the ``musk`` package nor torchscale is needed, and
its weights load from a local file too (TRIDENT supports only the hub).
"""

from __future__ import annotations

from dataclasses import replace

from ._config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, ImportRef

__all__ = ["ZOO_OTHER", "ZOO_OTHER_CONFIGS", "BIOMEDCLIP_VISION"]

_CTRANSPATH = EncoderConfig(
    name="ctranspath",
    architecture="timm:swin_tiny_patch4_window7_224 + ConvStem patch embedding (CTransPath)",
    kwargs={"img_size": 224, "num_classes": 0},
    embed_dim=768,
    hub_id="jamesdolezal/CTransPath",
    weights_file="ctranspath.pth",
    input_size=224,
    resize_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    tile_size=224,
    mpp=1.0,
    precision="fp32",
    pooling="mean",
    license="GPL-3.0 (Xiyue-Wang/TransPath)",
    license_url="https://github.com/Xiyue-Wang/TransPath",
    gated=False,
    description=(
        "CTransPath (Wang et al., MedIA 2022): Swin-T with a convolutional stem, semantically-relevant "
        "contrastive learning on 15M TCGA + PAIP patches; 768-d mean of the last stage's tokens after the final "
        "LayerNorm (head removed). Weights: the authors' ctranspath.pth (Google Drive), mirrored on the hub at "
        "jamesdolezal/CTransPath; the timm 0.5.4 layout is converted on loading. No single native mpp (20x and "
        "10x patches): 224 px at 1.0 µm/px (10x) chosen, as CHIEF; ImageNet mean/std, resize 224 bilinear."
    ),
    layout_source="TRIDENT a91fa84 CTransPathInferenceEncoder load, run (tests/golden/trident_layouts_more.json)",
)

_CHIEF_CTRANSPATH = replace(
    _CTRANSPATH,
    name="chief-ctranspath",
    hub_id="datasets/MahmoodLab/hest-bench",
    weights_file="fm_v1/ctranspath/CHIEF_CTransPath.pth",
    tile_size=256,
    mpp=1.0,
    license="GPL-3.0, non-commercial academic use (hms-dbmi/CHIEF, Yu Lab's terms); gated hub mirror",
    license_url="https://github.com/hms-dbmi/CHIEF",
    gated=True,
    description=(
        "CHIEF-CTransPath (Wang et al., Nature 2024): CTransPath's architecture, further pretrained by CHIEF on "
        "60k WSIs; the patch encoder of the CHIEF slide model and what TRIDENT calls 'ctranspath'. Weights: "
        "CHIEF_CTransPath.pth from the MahmoodLab/hest-bench dataset (gated; TRIDENT's source). 256 px tiles "
        "at 1.0 µm/px (10x, TRIDENT's --patch_size 256 --mag 10) resized to 224 (bilinear), ImageNet mean/std; "
        "768-d mean of the last stage's tokens."
    ),
)

_QUILTNET_B16 = EncoderConfig(
    name="quiltnet-b16",
    architecture="open_clip:ViT-B-16 image tower",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "quick_gelu": False,
    },
    hub_id="wisdomik/QuiltNet-B-16",
    weights_file="open_clip_pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="MIT",
    license_url="https://huggingface.co/wisdomik/QuiltNet-B-16",
    gated=False,
    description=(
        "QuiltNet-B-16 (Ikezogwo et al., NeurIPS 2023): open_clip ViT-B/16 trained on Quilt-1M; 512-d projected "
        "image embedding (encode_image, not L2-normalised). No native mpp (mixed magnifications): 224 px at "
        "0.5 µm/px chosen; CLIP preprocessing (bicubic 224 + centre crop, OpenAI mean/std). Text tower: "
        "create_clip_text_tower('quiltnet-b16')."
    ),
    layout_source=(
        "derived: open_clip 3.3 built-in 'ViT-B-16' config (model_configs/ViT-B-16.json); the hub "
        "open_clip_config.json was not readable offline"
    ),
)

#: open_clip ``vision_cfg`` of BiomedCLIP: a timm ViT-B/16 trunk (CLS token), linear projection to 512
BIOMEDCLIP_VISION = {
    "timm_model_name": "vit_base_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}

_BIOMEDCLIP = EncoderConfig(
    name="biomedclip",
    architecture="open_clip:TimmModel(vit_base_patch16_224, linear proj) image tower of BiomedCLIP",
    embed_dim=512,
    input_size=224,
    resize_size=224,
    kwargs={"embed_dim": 512, "vision_cfg": BIOMEDCLIP_VISION, "quick_gelu": False},
    hub_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    weights_file="open_clip_pytorch_model.bin",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    interpolation="bicubic",
    tile_size=224,
    mpp=0.5,
    precision="fp32",
    pooling="pooler",
    license="MIT",
    license_url="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    gated=False,
    description=(
        "BiomedCLIP (Zhang et al., NEJM AI 2024): CLIP trained on PMC-15M biomedical figure-caption pairs (not "
        "pathology-specific); timm ViT-B/16 trunk (CLS token) + linear projection, 512-d projected image "
        "embedding (encode_image, not L2-normalised). No native mpp: 224 px at 0.5 µm/px chosen; CLIP "
        "preprocessing. Text tower (PubMedBERT, context 256): create_clip_text_tower('biomedclip')."
    ),
    layout_source=(
        "derived: the BiomedCLIP model_cfg written out in open_clip's factory.create_model docstring (timm "
        "vit_base_patch16_224, timm_pool '', timm_proj linear; PubMedBERT text, mlp proj, CLS pooler, context "
        "256), built by open_clip 3.3; the hub open_clip_config.json was not readable offline"
    ),
)

_QUILTNET_B16_PMB = replace(
    _BIOMEDCLIP,
    name="quiltnet-b16-pmb",
    architecture="open_clip:TimmModel(vit_base_patch16_224, linear proj) image tower of QuiltNet-B-16-PMB",
    hub_id="wisdomik/QuiltNet-B-16-PMB",
    license="MIT",
    license_url="https://huggingface.co/wisdomik/QuiltNet-B-16-PMB",
    description=(
        "QuiltNet-B-16-PMB (Ikezogwo et al., NeurIPS 2023): ViT-B/16 image tower trained on Quilt-1M with a "
        "PubMedBERT text tower (context 256); 512-d projected image embedding. No native mpp: 224 px at 0.5 "
        "µm/px chosen; CLIP preprocessing. No text tower here (its projection type is not known offline)."
    ),
    layout_source=(
        "derived, assumption: BiomedCLIP's open_clip vision_cfg (timm ViT-B/16 trunk + linear proj; the model "
        "card names ViT-B/16 + PubMedBERT, and users' code reads visual.trunk); the hub open_clip_config.json "
        "was not readable offline: a file of another layout is refused by the strict load"
    ),
)

#: timm's IMAGENET_INCEPTION_MEAN / _STD (MUSK's README and TRIDENT's MuskInferenceEncoder)
_INCEPTION_MEAN = (0.5, 0.5, 0.5)
_INCEPTION_STD = (0.5, 0.5, 0.5)

_MUSK = EncoderConfig(
    name="musk",
    architecture="BEiT-3 large multiway transformer, vision experts only (MUSK musk_large_patch16_384)",
    kwargs={"img_size": 384, "patch_size": 16, "width": 1024, "depth": 24, "heads": 16, "mlp_dim": 4096},
    embed_dim=1024,
    hub_id="xiangjx/musk",
    weights_file="model.safetensors",
    input_size=384,
    resize_size=384,
    mean=_INCEPTION_MEAN,
    std=_INCEPTION_STD,
    interpolation="bicubic",
    tile_size=384,
    mpp=0.5,
    precision="fp16",
    pooling="cls",
    license="CC-BY-NC-ND-4.0 (non-commercial, no derivatives)",
    license_url="https://huggingface.co/xiangjx/musk",
    gated=True,
    description=(
        "MUSK (Xiang et al., Nature 2025): BEiT-3 large vision-language model pretrained by unified masked "
        "modelling on 50M pathology images and 1B text tokens. Image path only (the vision experts of the "
        "multiway blocks; the text experts, text embedding, heads and mask token of the file are dropped by "
        "name). 1024-d CLS token after the final LayerNorm, no head, not normalised (TRIDENT's default). 384 px "
        "tiles at 0.5 µm/px (20x, TRIDENT's --patch_size 384 --mag 20); bicubic resize to 384 + centre crop, "
        "Inception mean/std (0.5); fp16 as TRIDENT."
    ),
    layout_source=(
        "MUSK 714b666 musk_large_patch16_384 + TRIDENT a91fa84 MuskInferenceEncoder, run "
        "(tests/golden/musk_layout.json); the hub model.safetensors itself was not readable offline"
    ),
)

_MUSK_MS = replace(
    _MUSK,
    name="musk-ms",
    architecture="BEiT-3 large, vision experts only, MUSK's multi-scale forward (ms_aug, scales 1 and 2)",
    kwargs={**_MUSK.kwargs, "multiscale": True},
    embed_dim=2048,
    description=(
        "MUSK with its multi-scale forward (ms_aug=True, what MUSK's README advises for linear probes and "
        "MIL; TRIDENT's inference_aug): the 1024-d CLS of the 384 px tile concatenated with the mean CLS of the "
        "four 384 px quarters of the tile upsampled to 768 px (bicubic); 2048-d, five forward passes per tile. "
        "384 px tiles at 0.5 µm/px (20x); Inception mean/std; weights as 'musk'."
    ),
)

ZOO_OTHER_CONFIGS: tuple[EncoderConfig, ...] = (
    _CTRANSPATH,
    _CHIEF_CTRANSPATH,
    _QUILTNET_B16,
    _QUILTNET_B16_PMB,
    _BIOMEDCLIP,
    _MUSK,
    _MUSK_MS,
)

_CTP = ImportRef("slidescope.features.encoders.ctranspath:build_ctranspath")
_OPEN_CLIP = ImportRef("slidescope.features.encoders.clip:build_open_clip_image")
_MUSK_BUILD = ImportRef("slidescope.features.encoders.musk:build_musk")

#: (config, builder) pairs, appended to ``_catalog.BUILTINS``
ZOO_OTHER: tuple[tuple[EncoderConfig, ImportRef], ...] = (
    (_CTRANSPATH, _CTP),
    (_CHIEF_CTRANSPATH, _CTP),
    (_QUILTNET_B16, _OPEN_CLIP),
    (_QUILTNET_B16_PMB, _OPEN_CLIP),
    (_BIOMEDCLIP, _OPEN_CLIP),
    (_MUSK, _MUSK_BUILD),
    (_MUSK_MS, _MUSK_BUILD),
)
