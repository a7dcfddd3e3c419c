"""Learned tissue and artefact segmenters: HEST's and GrandQC's published networks, beside the classic detector.

The classic detector (:func:`slidescope.wsi.detect_tissue`) needs no weights and is the default. These models
need their published weights (fetched from the Hugging Face hub like the encoders', or a local file with
``weights=``) and torch; they return the same :class:`~slidescope.wsi.TissueMask`.

=====================  ======================================  ==========  =====================================
name                   network                                 runs at     output
=====================  ======================================  ==========  =====================================
``hest``               torchvision DeepLabV3-ResNet50, 2       1 µm/px     tissue where softmax(tissue) > 0.5
                       classes (HEST, Jaume et al. 2024)
``grandqc``            smp U-Net++ on EfficientNet-B0, 2       10 µm/px    tissue where class 0 wins with
                       classes (GrandQC tissue, Weng et al.                p >= 0.5; input JPEG-compressed at
                       2024)                                               quality 80 first, as trained
``grandqc-artefacts``  smp U-Net on EfficientNet-B0, 8         1 µm/px    one class per pixel: normal tissue,
                       classes (GrandQC artefacts)                         fold, dark spot & foreign object, pen
                                                                           marking, edge & air bubble, out of
                                                                           focus, background
=====================  ======================================  ==========  =====================================

Settings, classes and checkpoint conversions follow TRIDENT's loaders (mahmoodlab/TRIDENT @ a91fa84,
``trident/segmentation_models/load.py``), which run these checkpoints: the slide is read at the model's
µm/px, cut into non-overlapping 512 px tiles (white beyond the slide's edge), each tile ImageNet-normalised,
and the predictions stitched. The state-dict layouts are checked against the networks TRIDENT's own code
builds (``tests/golden/make_trident_segmenters.py``). Deviation: TRIDENT maps "10x" to 1 µm/px whatever the
scanner; slidescope reads at exactly the stated µm/px from the slide's own pixel size.

In the pipeline: ``--tissue hest|grandqc`` (:func:`find_tissue`) tiles on a learned mask, its name and
weights' sha256 in the tiling's cache key; ``--qc-model grandqc`` (:func:`artefact_measures`,
:func:`run_tile_qc`) adds the per-tile fractions of GrandQC's artefact classes to the tile QC;
``--segmenter-weights`` gives their local weights.

The weights are all in the hub repository ``MahmoodLab/hest-tissue-seg``; their terms are on its model card
(non-commercial research use); GrandQC's also on https://github.com/cpath-ukk/grandqc. U-Net and U-Net++
come from ``segmentation_models_pytorch`` (``pip install "slidescope[qc]"``).
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError, MissingDependencyError
from .encoders import WeightsError
from .encoders._registry import resolve_device
from .encoders._weights import file_digest, load_into, read_state_dict, resolve_weights

log = logging.getLogger(__name__)

__all__ = [
    "SegmenterConfig",
    "Segmenter",
    "register_segmenter",
    "list_segmenters",
    "get_segmenter_config",
    "create_segmenter",
    "segment_tissue",
    "segment_artefacts",
    "TISSUE_METHODS",
    "find_tissue",
    "device_of",
    "QC_MODELS",
    "artefact_measures",
    "run_tile_qc",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_ID = "MahmoodLab/hest-tissue-seg"
HUB_TERMS = "non-commercial research use, see the model card"


@dataclass(frozen=True)
class SegmenterConfig:
    """A segmentation network as data: where its weights are, the µm/px it runs at, its classes.

    Attributes
    ----------
    name : registry name.
    architecture : how it is built (for provenance).
    hub_id, weights_file : Hugging Face repository and file of the published weights.
    license, license_url, gated : terms of the weights.
    mpp : µm/px the network was trained on; the slide is read at it.
    input_size : tile side in px at ``mpp``.
    classes : class names, by output channel.
    tissue_classes : the channels that count as tissue in a tissue mask.
    threshold : minimum softmax probability of the winning tissue class (None: the arg-max alone).
    jpeg_quality : the input is JPEG-compressed at this quality first (as the model was trained), or None.
    precision : compute precision on a GPU (CPU runs fp32).
    artefacts : (channel, short name) of the artefact classes of an artefact model: the tile QC measures
        the fraction of each (``grandqc_<name>``, see :func:`artefact_measures`).
    """

    name: str
    architecture: str
    hub_id: str
    weights_file: str
    mpp: float
    classes: tuple[str, ...]
    tissue_classes: tuple[int, ...]
    input_size: int = 512
    threshold: float | None = 0.5
    jpeg_quality: int | None = None
    precision: str = "fp32"
    license: str = HUB_TERMS
    license_url: str | None = f"https://huggingface.co/{HUB_ID}"
    gated: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""
    artefacts: tuple[tuple[int, str], ...] = ()
    #: checkpoint key conversion (e.g. HEST's Lightning prefix), applied before the strict load
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False
    )


Builder = Callable[[SegmenterConfig], nn.Module]
_REGISTRY: dict[str, tuple[SegmenterConfig, Builder]] = {}


def register_segmenter(config: SegmenterConfig, builder: Builder) -> None:
    """Add a segmenter; ``builder(config)`` returns the network with random weights, outputs (B, C, H, W)."""
    if config.name in _REGISTRY:
        log.warning("segmenter %r registered twice; the later one wins", config.name)
    _REGISTRY[config.name] = (config, builder)


def list_segmenters() -> list[str]:
    """Registered segmenter names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[SegmenterConfig, Builder]:
    if name not in _REGISTRY:
        raise InvalidParameterError(
            f"unknown segmenter {name!r}; choose one of {', '.join(list_segmenters())}, or the classic "
            "detector (slidescope.wsi.detect_tissue), which needs no weights"
        )
    return _REGISTRY[name]


def get_segmenter_config(name: str) -> SegmenterConfig:
    """The :class:`SegmenterConfig` of a registered segmenter."""
    return _entry(name)[0]


# -- the published networks ------------------------------------------------------------------------------


def _hest_network(config: SegmenterConfig) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50  # type: ignore[import-untyped]
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3  # type: ignore[import-untyped]

    class _DeepLab(DeepLabV3):  # torchvision's network, returning the logits instead of {"out": logits}
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)["out"]

    # no ImageNet backbone download: the checkpoint holds every weight; no auxiliary head (HEST drops it)
    net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=len(config.classes))
    return _DeepLab(net.backbone, net.classifier, None)


def _hest_convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HEST's Lightning checkpoint: keys ``model.<key>``; the auxiliary head (``aux_classifier``) is dropped."""
    return {k.removeprefix("model."): v for k, v in state.items() if "aux" not in k}


def _smp(kind: str, classes: int) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp  # type: ignore[import-untyped]
    except ImportError as err:
        raise MissingDependencyError(
            "GrandQC's segmenters are built by segmentation_models_pytorch: pip install 'slidescope[qc]'"
        ) from err
    cls = {"unet": smp.Unet, "unet++": smp.UnetPlusPlus}[kind]
    # smp deprecates its own "timm-" encoders for timm's ("tu-"), whose parameter names differ: GrandQC's
    # checkpoints hold the "timm-efficientnet-b0" names, so that encoder it must be
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*`timm-` encoders are deprecated", category=DeprecationWarning
        )
        return cls(
            encoder_name="timm-efficientnet-b0", encoder_weights=None, classes=classes, activation=None
        )


HEST = SegmenterConfig(
    name="hest",
    architecture="torchvision:deeplabv3_resnet50, classifier[4] = Conv2d(256, 2, 1)",
    hub_id=HUB_ID,
    weights_file="deeplabv3_seg_v4.ckpt",
    mpp=1.0,
    classes=("background", "tissue"),
    tissue_classes=(1,),
    precision="fp16",
    convert=_hest_convert,
    description="HEST tissue segmenter (Jaume et al., NeurIPS 2024): DeepLabV3-ResNet50 at 1 µm/px.",
)
GRANDQC = SegmenterConfig(
    name="grandqc",
    architecture="segmentation_models_pytorch:UnetPlusPlus(timm-efficientnet-b0, classes=2)",
    hub_id=HUB_ID,
    weights_file="Tissue_Detection_MPP10.pth",
    mpp=10.0,
    classes=("tissue", "background"),
    tissue_classes=(0,),
    jpeg_quality=80,
    precision="fp16",
    description="GrandQC tissue detection (Weng et al., Nat Commun 2024): U-Net++ at 10 µm/px.",
)
GRANDQC_ARTEFACTS = SegmenterConfig(
    name="grandqc-artefacts",
    architecture="segmentation_models_pytorch:Unet(timm-efficientnet-b0, classes=8)",
    hub_id=HUB_ID,
    weights_file="GrandQC_MPP1_state_dict.pth",
    mpp=1.0,
    classes=(
        "unused",
        "normal tissue",
        "fold",
        "dark spot & foreign object",
        "pen marking",
        "edge & air bubble",
        "out of focus",
        "background",
    ),
    tissue_classes=(0, 1),  # TRIDENT's tissue rule: classes 0 and 1 are clean tissue, the rest is not
    threshold=None,
    artefacts=((2, "fold"), (3, "dark_spot"), (4, "pen"), (5, "bubble"), (6, "out_of_focus")),
    description="GrandQC artefact segmentation (Weng et al., Nat Commun 2024): U-Net at 1 µm/px, 8 classes.",
)

register_segmenter(HEST, _hest_network)
register_segmenter(GRANDQC, lambda c: _smp("unet++", len(c.classes)))
register_segmenter(GRANDQC_ARTEFACTS, lambda c: _smp("unet", len(c.classes)))


# -- loading and running ---------------------------------------------------------------------------------


class Segmenter(nn.Module):
    """A loaded segmenter: ``probabilities(tiles)`` (B, C, H, W) and ``classes_of(tiles)`` (B, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, config: SegmenterConfig, network: nn.Module, weights_sha256: str | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.network = network
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _prepare(self, tiles: np.ndarray) -> torch.Tensor:
        if self.config.jpeg_quality is not None:
            tiles = np.stack([_jpeg_round_trip(t, self.config.jpeg_quality) for t in tiles])
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    @torch.no_grad()
    def probabilities(self, tiles: np.ndarray) -> torch.Tensor:
        """Softmax over the classes of uint8 RGB tiles (B, H, W, 3): float32 (B, C, H, W)."""
        x = self._prepare(tiles)
        half = self.device.type == "cuda" and self.config.precision == "fp16"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=half):
            logits = self.network(x)
        return torch.softmax(logits.float(), dim=1)

    def tissue(self, tiles: np.ndarray) -> np.ndarray:
        """bool (B, H, W): the winning class is a tissue class (with probability >= ``threshold``)."""
        p = self.probabilities(tiles)
        best, cls = p.max(dim=1)
        keep = torch.isin(cls, torch.tensor(self.config.tissue_classes, device=cls.device))
        if self.config.threshold is not None:
            keep &= best >= self.config.threshold
        return keep.cpu().numpy()

    def classes_of(self, tiles: np.ndarray) -> np.ndarray:
        """int64 (B, H, W): the arg-max class per pixel."""
        return self.probabilities(tiles).argmax(dim=1).cpu().numpy()


def _jpeg_round_trip(tile: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def create_segmenter(
    name: str, *, weights: str | os.PathLike[str] | None = None, device: str = "auto"
) -> Segmenter:
    """Build a registered segmenter and load its published weights (strict: every key, every shape).

    Parameters
    ----------
    name : one of :func:`list_segmenters`.
    weights : a local weights file, or a folder holding ``config.weights_file``; None: the Hugging Face hub.
    device : ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...

    Raises
    ------
    WeightsError
        Weights missing or unreachable (the message names the hub repository, the file and the licence), or
        a file that does not fit the architecture.
    MissingDependencyError
        segmentation_models_pytorch is missing for a GrandQC model.
    """
    config, builder = _entry(name)
    network = builder(config)
    try:
        path = resolve_weights(config, weights)  # type: ignore[arg-type]  # the same fields as an EncoderConfig
    except WeightsError as err:  # the advice at its end names the encoders' options: name the segmenter's
        said = str(err).split(" Or download them once")[0]
        raise WeightsError(
            f"{said} Or download them once and pass the file or folder: create_segmenter({name!r}, "
            "weights='PATH') / `--segmenter-weights PATH` (run, extract, tile)."
        ) from err
    state = read_state_dict(path)
    if config.convert is not None:
        state = config.convert(state)
    load_into(network, state, name=name)
    seg = Segmenter(config, network.eval(), file_digest(path))
    return seg.to(resolve_device(device))


def _read_at(slide: Any, mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole slide at ``mpp`` µm/px (area-averaged from the pyramid); (rgb, its µm/px (x, y))."""
    sx, sy = slide.mpp
    w0, h0 = slide.dimensions
    w, h = max(1, round(w0 * sx / mpp)), max(1, round(h0 * sy / mpp))
    if w * h > 40_000**2:
        raise InvalidParameterError(
            f"{slide.path.name} at {mpp} µm/px would be {w}x{h} px; too large for one segmentation pass"
        )
    rgb = slide.get_thumbnail((w, h))
    return rgb, (sx * w0 / rgb.shape[1], sy * h0 / rgb.shape[0])


def _tiles_of(rgb: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """Non-overlapping ``size`` px tiles of ``rgb`` (white beyond its edges), row-major; and the grid."""
    h, w = rgb.shape[:2]
    rows, cols = math.ceil(h / size), math.ceil(w / size)
    padded = np.full((rows * size, cols * size, 3), 255, np.uint8)
    padded[:h, :w] = rgb[..., :3]
    tiles = padded.reshape(rows, size, cols, size, 3).swapaxes(1, 2).reshape(-1, size, size, 3)
    return tiles, rows, cols


def _run(
    seg: Segmenter, rgb: np.ndarray, batch_size: int, what: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    size = seg.config.input_size
    tiles, rows, cols = _tiles_of(rgb, size)
    out = np.concatenate([what(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)])
    full = out.reshape(rows, cols, size, size).swapaxes(1, 2).reshape(rows * size, cols * size)
    return full[: rgb.shape[0], : rgb.shape[1]]


def _segmenter(model: str | Segmenter, weights: Any, device: str) -> Segmenter:
    return model if isinstance(model, Segmenter) else create_segmenter(model, weights=weights, device=device)


def segment_tissue(
    slide: Any,
    model: str | Segmenter = "hest",
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
):
    """Tissue of an open slide by a learned segmenter, as a :class:`~slidescope.wsi.TissueMask`.

    The slide is read at the model's µm/px, cut into its input tiles, and the per-pixel predictions are
    stitched into one mask at that resolution (``params`` record the model, its weights' sha256 and the
    µm/px). Holes are kept as the model predicts them (TRIDENT's default, ``holes_are_tissue``, fills them).

    Parameters
    ----------
    slide : an open :class:`~slidescope.wsi.Slide` with a known pixel size.
    model : a name from :func:`list_segmenters` or a :class:`Segmenter` already loaded.
    weights, device : as in :func:`create_segmenter` (used with a name).
    batch_size : tiles per forward pass.
    """
    from ..wsi import tissue_mask_from_array

    seg = _segmenter(model, weights, device)
    rgb, mpp = _read_at(slide, seg.config.mpp)
    mask = _run(seg, rgb, batch_size, seg.tissue)
    params = {
        "method": seg.config.name,
        # what a tile grid made on this mask records in its cache key (see make_tile_grid)
        "segmenter": {"name": seg.config.name, "weights_sha256": seg.weights_sha256},
        "model_mpp": seg.config.mpp,
        "mask_mpp": [float(mpp[0]), float(mpp[1])],
        "weights_sha256": seg.weights_sha256,
        "hub_id": seg.config.hub_id,
        "slide": slide.path.name,
    }
    return tissue_mask_from_array(mask, slide_dimensions=slide.dimensions, slide_mpp=slide.mpp, params=params)


def segment_artefacts(
    slide: Any,
    model: str | Segmenter = "grandqc-artefacts",
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
) -> tuple[np.ndarray, tuple[str, ...], tuple[float, float]]:
    """Per-pixel artefact classes of a slide: ``(class map int64 (h, w), class names, µm/px (x, y))``."""
    seg = _segmenter(model, weights, device)
    rgb, mpp = _read_at(slide, seg.config.mpp)
    return _run(seg, rgb, batch_size, seg.classes_of), seg.config.classes, mpp


#: the values of the ``tissue`` option (``--tissue``): the classic detector and the learned tissue segmenters
TISSUE_METHODS = ("classic", "hest", "grandqc")


@functools.lru_cache(maxsize=2)
def _cached_segmenter(name: str, weights: str | None, device: str) -> Segmenter:
    """One loaded segmenter per (name, weights, device), reused by the following slides of a batch."""
    return create_segmenter(name, weights=weights, device=device)


def device_of(module: Any) -> str:
    """The device of a torch module's first parameter or buffer (``"cpu"`` when it has none), as text."""
    tensors = [*module.parameters(), *module.buffers()] if isinstance(module, nn.Module) else []
    return str(tensors[0].device) if tensors else "cpu"


def find_tissue(
    slide: Any,
    method: str = "classic",
    *,
    pen: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    allow_darkfield: bool = False,
):
    """The tissue of an open slide by the ``tissue`` option's method (``--tissue``): a ``TissueMask``.

    Parameters
    ----------
    slide : an open :class:`~slidescope.wsi.Slide`.
    method : ``"classic"`` (:func:`slidescope.wsi.detect_tissue`, no weights) or a learned tissue segmenter of
        :data:`TISSUE_METHODS` (:func:`segment_tissue`; loaded once and reused for the next slides).
    pen : pen removal of the classic detector (the learned segmenters decide alone).
    weights : the segmenter's local weights file or folder; None: the Hugging Face hub (cache).
    device : where the segmenter runs (``"auto"``: CUDA when present).
    allow_darkfield : the classic detector analyses a slide with a dark background instead of refusing it
        (``--allow-darkfield``; see :func:`slidescope.wsi.detect_tissue`).

    A grid made on a learned mask records the segmenter and its weights' sha256 in its cache key, so its
    embeddings are stored beside, never mixed with, those of the classic tiling.
    """
    if method not in TISSUE_METHODS:
        raise InvalidParameterError(f"tissue must be one of {', '.join(TISSUE_METHODS)}, got {method!r}")
    if method == "classic":
        from ..wsi import detect_tissue

        return detect_tissue(slide, pen=pen, allow_darkfield=allow_darkfield)
    path = None if weights is None else str(Path(weights).expanduser().resolve())
    return segment_tissue(slide, _cached_segmenter(method, path, str(device)))


#: the values of the ``qc_model`` option (``--qc-model``) and the segmenter each one runs
QC_MODELS = {"none": None, "grandqc": "grandqc-artefacts"}


def artefact_measures(
    slide: Any,
    grid: Any,
    model: str = "grandqc",
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """The learned artefact QC of the tiles of ``grid``: per tile, the fraction of each artefact class.

    The artefact model (:data:`QC_MODELS`; GrandQC's at 1 µm/px) segments the whole slide
    (:func:`segment_artefacts`); each tile's footprint on its class map gives one fraction per artefact
    class (:func:`slidescope.wsi.class_fractions`), named ``grandqc_fold``, ``grandqc_dark_spot``,
    ``grandqc_pen``, ``grandqc_bubble``, ``grandqc_out_of_focus``. They go to
    :func:`~slidescope.wsi.qc_tiles` (``measures=``), which stores, checks and summarises them with the
    classic measures.

    Returns
    -------
    (measures, model)
        name -> float32 (N,), and the model's name and weights' sha256 (for the cache key); ``({}, None)``
        for ``model="none"``.
    """
    from ..wsi import LEARNED_PREFIX, class_fractions

    if model not in QC_MODELS:
        raise InvalidParameterError(f"qc_model must be one of {', '.join(QC_MODELS)}, got {model!r}")
    name = QC_MODELS[model]
    if name is None:
        return {}, None
    path = None if weights is None else str(Path(weights).expanduser().resolve())
    seg = _cached_segmenter(name, path, str(device))
    class_map, _, mpp = segment_artefacts(slide, seg)
    classes = {c: f"{LEARNED_PREFIX}{short}" for c, short in seg.config.artefacts}
    provenance = {"name": seg.config.name, "weights_sha256": seg.weights_sha256}
    return class_fractions(grid, class_map, mpp, classes), provenance


def run_tile_qc(
    slide: Any,
    grid: Any,
    policy: str,
    *,
    mask: Any = None,
    qc_model: str = "none",
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    thresholds: Any = None,
) -> Any:
    """The tile QC of the ``qc`` option with the learned artefact QC of ``qc_model``: the classic measures
    (:func:`~slidescope.wsi.qc_tiles`) and, for ``qc_model="grandqc"``, :func:`artefact_measures` with them.
    ``policy="off"``: ``grid`` itself, no model run. With ``"flag"`` the classic measures are deferred to the
    extraction's read of the tiles (``defer=True``; the grid must go to
    :func:`~slidescope.features.extract_features`, which completes them). ``thresholds``: the QC thresholds
    set instead of the defaults (:func:`~slidescope.wsi.check_qc_thresholds`)."""
    from ..wsi import qc_tiles

    measures: dict[str, np.ndarray] = {}
    model: dict[str, Any] | None = None
    if policy != "off":
        measures, model = artefact_measures(slide, grid, qc_model, weights=weights, device=device)
    return qc_tiles(
        slide, grid, policy, mask=mask, measures=measures, model=model, defer=True, thresholds=thresholds
    )


__all__ += ["WeightsError"]
