"""The patch-encoder contract as plain data: :class:`EncoderConfig`, and :class:`ImportRef` for the classes
a config names without importing them.

Importing this module loads no torch: the registry, ``slidescope run --dry-run`` and config-file checks
read configs (``embed_dim``, ``mpp``, ``tile_size``) without building a model.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["EncoderConfig", "ImportRef", "IMAGENET_MEAN", "IMAGENET_STD", "resolve_kwargs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenAI CLIP normalisation (PLIP, QuiltNet, CONCH v1, BiomedCLIP)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Lunit's DINO normalisation (lunit-io/benchmark-ssl-pathology README; the hub config.json of the timm port)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
#: kaiko.ai's normalisation
KAIKO_MEAN = (0.5, 0.5, 0.5)
KAIKO_STD = (0.5, 0.5, 0.5)

Pooling = Literal["cls", "cls+mean", "mean", "pooler", "none"]
Precision = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class ImportRef:
    """An object named by where it lives, ``"package.module:attribute"``, imported when :meth:`load` is called.

    Lets data (an :class:`EncoderConfig`'s ``kwargs``, a registered builder) name a class of torch or timm
    without importing them. Its provenance text (:meth:`EncoderConfig.to_dict`) is that of the object.
    """

    path: str

    def __post_init__(self) -> None:
        module, sep, attr = self.path.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"an import reference is 'package.module:attribute', got {self.path!r}")

    def load(self) -> Any:
        """Import the module and return the attribute (dotted attributes are followed)."""
        module, _, attr = self.path.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every :class:`ImportRef` value replaced by the object it names."""
    return {k: v.load() if isinstance(v, ImportRef) else v for k, v in kwargs.items()}


#: timm's SwiGLU MLP and its activation, imported when a model is built (Virchow, H-optimus, Hibou...)
SWIGLU = {"mlp_layer": ImportRef("timm.layers:SwiGLUPacked"), "act_layer": ImportRef("torch.nn:SiLU")}


@dataclass(frozen=True)
class EncoderConfig:
    """Everything the pipeline needs to know about a patch encoder, as data.

    Attributes
    ----------
    name : registry name (``"uni"``, ``"virchow2"``...).
    architecture : how it is built, e.g. ``"timm:vit_large_patch16_224"``.
    kwargs : the exact constructor kwargs that match the published checkpoint (a class may be given as an
        :class:`ImportRef`, imported when the model is built).
    hub_id : Hugging Face hub repository of the weights (None for weight-free models).
    weights_file : file inside ``hub_id`` holding the weights.
    embed_dim : length of one tile embedding.
    input_size : side in px of the model input (tiles are resized / cropped to it on the device).
    resize_size : side the tile is resized to before the centre crop (== input_size: no crop).
    mean, std : normalisation of RGB in [0, 1].
    interpolation : ``"bilinear"`` or ``"bicubic"`` for the on-device resize.
    tile_size, mpp : what the model was trained on: tile side in px at mpp µm/px.
    precision : recommended compute precision on a GPU.
    pooling : how the token sequence becomes one vector (documented per model).
    license, license_url, gated : terms of the weights (not of slidescope).
    weight_free : True when the encoder needs no weights at all.
    layout_source : where the state-dict layout (keys and shapes) this config builds was checked, e.g.
        ``"TRIDENT a91fa84 strict load"`` (tests/golden); ``"read: <file>"`` when it was read from the
        published checkpoint itself; ``""`` when it is derived from the model card and code only. Shown by
        ``slidescope encoders``; not part of the cache key (it says how we know, not what is computed).
    """

    name: str
    architecture: str
    embed_dim: int
    input_size: int = 224
    resize_size: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    weights_file: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    tile_size: int = 224
    mpp: float = 0.5
    precision: Precision = "fp32"
    pooling: Pooling = "cls"
    num_register_tokens: int = 0
    license: str = "unknown"
    license_url: str | None = None
    gated: bool = False
    weight_free: bool = False
    description: str = ""
    layout_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for provenance in stores and checkpoints (and the stores' cache key)."""
        out = asdict(self)
        # how the layout was checked changes no embedding: the cache keys stay as they were
        out.pop("layout_source")
        out["kwargs"] = {k: _jsonable(v) for k, v in self.kwargs.items()}
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, ImportRef):
        value = value.load()  # the same text as when the object itself is in the kwargs
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return getattr(value, "__qualname__", None) or repr(value)
