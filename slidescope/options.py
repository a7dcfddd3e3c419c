"""The option schema shared by the batch run, extraction, tiling and the viewer: each option once.

Frozen dataclasses group the options by concern: :class:`TilingOptions` (where the tiles are),
:class:`EmbeddingOptions` (how they are encoded and stored). Each field carries its default, its kind (how
a config-file value is checked), its choices (from the owner where the owner publishes them) and its help
text in ``field.metadata`` (see :func:`option`). From them are derived:

- :class:`~slidescope.pipeline.RunConfig` (it extends both) and its config-file keys and checks;
- the command-line options of ``slidescope run``, ``extract``, ``tile`` and ``info`` and their ``--help``;
- :class:`~slidescope.features.extract.ExtractJob` (extends both) and the defaults of
  :func:`~slidescope.features.extract.extract_slides`, :func:`~slidescope.features.extract_features`
  and the viewer's :class:`~slidescope.viewer.AnalysisRequest`.

Kept light: importing it loads no numpy, torch or slide library (choices are looked up when asked for).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .wsi import DEFAULT_MIN_TISSUE

__all__ = [
    "TilingOptions",
    "EmbeddingOptions",
    "SlideOptions",
    "OptionInfo",
    "option",
    "option_info",
    "options_of",
    "values_of",
    "DEFAULT_OFFLINE_ENCODER",
    "parse_batch_size",
    "one_of",
]

#: the encoder the tools use when none is named: it needs no weights and runs offline
DEFAULT_OFFLINE_ENCODER = "he-descriptor"

#: how a config-file value is checked: "str", "int", "float", "bool", "path" (relative to the file),
#: "paths" (one or a list), "batch" (a positive whole number or "auto")
KINDS = ("str", "int", "float", "bool", "path", "paths", "batch")


@dataclass(frozen=True)
class OptionInfo:
    """What the schema says about one option (``field.metadata["option"]``).

    Attributes
    ----------
    kind : how a value is checked (one of :data:`KINDS`).
    help : help text, without the default and without a final full stop; ``{choices}`` in it stands for
        the allowed values (see :meth:`text`).
    choices : the allowed values, or a callable that returns them (asked when a value is checked, so the
        owner's registry is imported only then), or None (any value of the kind).
    default_text : how ``--help`` names the default when the option's own default is None or is resolved
        later (``"the encoder's"``); None: the default's value.
    flag : the command-line spelling when it is not ``--name-with-dashes`` (``"--heatmaps/--no-heatmaps"``).
    """

    kind: str
    help: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    default_text: str | None = None
    flag: str | None = None

    def allowed(self) -> tuple[str, ...] | None:
        """The allowed values (the owner's registry asked now), or None."""
        return self.choices() if callable(self.choices) else self.choices

    def text(self) -> str:
        """The help text with ``{choices}`` replaced by the allowed values (``"a, b or c"``), so a help text
        can name the choices of a registry that is only asked when the help is shown."""
        if "{choices}" not in self.help:
            return self.help
        return self.help.replace("{choices}", one_of(self.allowed() or ()))


def option(
    default: Any = dataclasses.MISSING,
    *,
    kind: str,
    help: str,  # noqa: A002 - the name every CLI library uses
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    default_text: str | None = None,
    flag: str | None = None,
    compare: bool = True,
) -> Any:
    """A dataclass field of the schema: its default and its :class:`OptionInfo`."""
    if kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}; one of {KINDS}")
    info = OptionInfo(kind=kind, help=help, choices=choices, default_text=default_text, flag=flag)
    return dataclasses.field(default=default, compare=compare, metadata={"option": info})


def option_info(cls: type, name: str) -> OptionInfo:
    """The :class:`OptionInfo` of field ``name`` of the schema dataclass ``cls``."""
    return cls.__dataclass_fields__[name].metadata["option"]  # type: ignore[attr-defined]


def options_of(cls: type) -> Iterator[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are options of the schema (those with an :class:`OptionInfo`), in order."""
    return (f for f in dataclasses.fields(cls) if "option" in f.metadata)


def values_of(obj: Any, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s fields held by ``obj`` (e.g. the tiling options of a run configuration)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}


def one_of(choices: tuple[str, ...]) -> str:
    """``"a, b or c"``: the choices as help text says them."""
    if not choices:
        return "none"
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def parse_batch_size(value: str | int | None) -> int | str | None:
    """``"auto"``, a whole number given as text, or None; anything else raises ``ValueError``."""
    if value is None or value == "auto" or isinstance(value, int):
        return value
    return int(value)


# -- choices owned elsewhere, looked up when a value is checked ----------------------------------------------


def _pen_modes() -> tuple[str, ...]:
    from .wsi import PEN_MODES

    return ("auto", *(m for m in PEN_MODES if m != "auto"))  # "auto" first: the default


def _edge_policies() -> tuple[str, ...]:
    from .wsi import EDGE_POLICIES

    return tuple(EDGE_POLICIES)  # "drop" first: the default


def _downscales() -> tuple[str, ...]:
    from .wsi import DOWNSCALES

    return tuple(DOWNSCALES)  # "area" first: the default


def _qc_policies() -> tuple[str, ...]:
    from .wsi import QC_POLICIES

    return tuple(QC_POLICIES)  # "off" first: the default


def _BACKENDS() -> tuple[str, ...]:  # noqa: N802 - named like the other choice lists
    """The slide readers: "auto" (picks one per file) and every registered backend (built-in: openslide,
    tiffslide, pil, ome-zarr; plugins: the ``slidescope.readers`` entry points), asked from the registry."""
    from .wsi import backend_names

    return ("auto", *backend_names())


#: ``--backend``'s help: ``{choices}`` is the registry's names, asked when the help is built
BACKEND_HELP = "Slide reader: {choices} (auto: by file type, then by content; pil: PNG/JPEG/flat TIFF)"
# The next three are fixed enumerations, not registries; their owners import torch, which this module
# must not, so they are written here and tests/test_options.py checks they equal the owners'.
#: stain normalisation methods (:func:`slidescope.features.stain.make_normalizer`)
_STAINS = ("macenko", "reinhard")
#: encoder precisions (:func:`slidescope.features.create_encoder`)
_PRECISIONS = ("fp32", "fp16", "bf16")
#: stored embedding dtypes (:class:`slidescope.features.store.SlideStore`)
_DTYPES = ("float16", "float32")
#: tissue detectors: the classic one (:func:`slidescope.wsi.detect_tissue`) and the learned tissue segmenters
#: (:mod:`slidescope.features.segmenters`, which imports torch)
_TISSUE_METHODS = ("classic", "hest", "grandqc")
#: learned artefact QC models (:data:`slidescope.features.segmenters.QC_MODELS`)
_QC_MODELS = ("none", "grandqc")

PEN_HELP = (
    "Pen-mark removal in tissue detection: auto (on, but off on slides that look like IHC, whose blue "
    "counterstain would be taken for ink), on or off"
)
EDGE_HELP = (
    "The strips at the right and bottom edges narrower than a tile: drop (not tiled) or pad (tiled; the part "
    "of a tile outside the slide is white and its fraction recorded per tile)"
)
DOWNSCALE_HELP = (
    "How tiles read at a finer level are shrunk: area (exact area average: OpenSlide's pixels averaged) or "
    "jpeg-dct (whole factors 2, 4, 8 on JPEG-tiled TIFFs: tiles decoded at 1/k by libjpeg's scaled IDCT, "
    "1.45-1.8x less CPU per file tile at 1/2, within 23 grey levels of area, mean 0.1-0.33; in the cache key)"
)
QC_HELP = (
    "Classic tile QC (blur, folds, dark spots, pen, bubbles): off, flag (measured and stored with the tiles) "
    "or exclude (flagged tiles are not embedded)"
)
TISSUE_HELP = (
    "Tissue detection: classic (no weights), hest or grandqc (learned segmenters: their weights from the "
    "Hugging Face hub or --segmenter-weights; --pen applies to classic only)"
)
SEGMENTER_WEIGHTS_HELP = (
    "Local weights of the learned segmenters (offline use): a folder with the files of the hub repository "
    "MahmoodLab/hest-tissue-seg, or one file"
)
QC_MODEL_HELP = (
    "Learned artefact QC added to --qc flag/exclude: none or grandqc (GrandQC's artefact model: per-tile "
    "fractions of fold, dark spot, pen, bubble and out-of-focus pixels, and checks on them)"
)
QC_THRESHOLDS_HELP = (
    "QC thresholds instead of the defaults, name=value pairs: focus_min, fold_ratio, dark_max, pen_max, "
    "bright_max, artefact_max (e.g. focus_min=40,pen_max=0.05: another focus_min at another mpp or for a very "
    "pale stain); recorded with the QC and, with --qc exclude, in the cache key"
)
ALLOW_DARKFIELD_HELP = (
    "Analyse slides whose background is dark, which are otherwise refused as fluorescence stored as 8-bit RGB "
    "(for a brightfield scan that trips that rule; SLIDESCOPE_ALLOW_DARKFIELD=1 in the environment does the same)"
)
SLIDE_MPP_HELP = "Level-0 µm/px of the scan, filled in for slides whose metadata lacks it (a file's own wins)"
FORCE_SLIDE_MPP_HELP = "Level-0 µm/px imposed on the slide(s), overriding their metadata"


@dataclass(frozen=True, kw_only=True)
class TilingOptions:
    """Where the tiles are: resolution, size, overlap, tissue, and how the slides are read.

    ``mpp`` and ``tile_size`` default (None) to what the encoder was trained on.
    """

    mpp: float | None = option(None, kind="float", help="Tile µm/px", default_text="the encoder's")
    tile_size: int | None = option(None, kind="int", help="Tile px", default_text="the encoder's")
    overlap: int = option(0, kind="int", help="Pixels shared by neighbouring tiles")
    min_tissue: float = option(DEFAULT_MIN_TISSUE, kind="float", help="Minimum tissue fraction of a tile")
    edge: str = option("drop", kind="str", choices=_edge_policies, help=EDGE_HELP)
    downscale: str = option("area", kind="str", choices=_downscales, help=DOWNSCALE_HELP)
    pen: str = option("auto", kind="str", choices=_pen_modes, help=PEN_HELP)
    tissue: str = option("classic", kind="str", choices=_TISSUE_METHODS, help=TISSUE_HELP)
    segmenter_weights: str | None = option(None, kind="path", help=SEGMENTER_WEIGHTS_HELP)
    qc: str = option("off", kind="str", choices=_qc_policies, help=QC_HELP)
    qc_model: str = option("none", kind="str", choices=_QC_MODELS, help=QC_MODEL_HELP)
    qc_thresholds: str | None = option(None, kind="str", help=QC_THRESHOLDS_HELP, default_text="the defaults")
    allow_darkfield: bool = option(
        False, kind="bool", help=ALLOW_DARKFIELD_HELP, default_text="off", flag="--allow-darkfield"
    )
    slide_mpp: float | None = option(None, kind="float", help=SLIDE_MPP_HELP)
    force_slide_mpp: float | None = option(None, kind="float", help=FORCE_SLIDE_MPP_HELP)
    backend: str = option("auto", kind="str", choices=_BACKENDS, help=BACKEND_HELP)


@dataclass(frozen=True, kw_only=True)
class EmbeddingOptions:
    """How the tiles are encoded and stored: encoder, weights, device, precision, batches, dtype, stain."""

    encoder: str = option(kind="str", help="Patch encoder (see `slidescope encoders`) or timm:<name>")
    weights: str | None = option(None, kind="path", help="Local encoder weights file or folder (offline use)")
    stain: str | None = option(
        None,
        kind="str",
        choices=_STAINS,
        help=f"Stain normalisation: {one_of(_STAINS)}",
        default_text="none",
    )
    dtype: str = option(
        "float16", kind="str", choices=_DTYPES, help=f"Stored embedding dtype: {one_of(_DTYPES)}"
    )
    precision: str | None = option(
        None,
        kind="str",
        choices=_PRECISIONS,
        help=one_of(_PRECISIONS),
        default_text="the model's on GPU, fp32 on CPU",
    )
    device: str = option("auto", kind="str", help="auto, cpu, cuda, cuda:1...")
    batch_size: int | str = option("auto", kind="batch", help="Tiles per batch or 'auto'")
    num_workers: int | None = option(
        None, kind="int", help="Reader processes per slide", default_text="one per core on CPU"
    )


@dataclass(frozen=True, kw_only=True)
class SlideOptions(TilingOptions, EmbeddingOptions):
    """Everything that turns one slide into stored embeddings: the tiling and the embedding options.

    Extended by :class:`~slidescope.pipeline.RunConfig` (a batch run) and
    :class:`~slidescope.features.extract.ExtractJob` (one ``slidescope extract`` task)."""
