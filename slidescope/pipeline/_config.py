"""The batch run's configuration: one frozen, picklable :class:`RunConfig`, read from a YAML or TOML file
and/or keyword options (flags override the file), validated before any slide is touched.

Config-file keys are the long option names of ``slidescope run`` (``tile-size`` or ``tile_size``);
relative paths in a file are relative to the file. :func:`result_signature` is the part of a
configuration that decides whether a finished slide's results are still valid (encoder, weights,
tiling, models, prompts, heatmap settings); execution details (device, workers, batch size, output
folder) are not part of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._location import as_location
from ..errors import InvalidParameterError
from ..options import SlideOptions, one_of, option, option_info, options_of

log = logging.getLogger(__name__)

__all__ = [
    "RunConfig",
    "load_config_file",
    "execution_options",
    "EXECUTION_KEYS",
    "resolve_config",
    "result_signature",
    "signature_changes",
    "CONFIG_KEYS",
    "expand_models",
]


#: zero-shot prompt ensembling (:func:`slidescope.vlm.zero_shot`)
_ENSEMBLES = ("mean-embedding", "sum-probability")
#: heatmap colour maps and score normalisations (:func:`slidescope.mil.heatmap`)
_CMAPS = ("inferno", "viridis", "magma", "jet")
_NORMALIZE = ("rank", "minmax")


@dataclass(frozen=True, kw_only=True)
class RunConfig(SlideOptions):
    """Everything one slide's processing needs; frozen and picklable (it travels to worker processes).

    The tiling and embedding options are those of :class:`~slidescope.options.TilingOptions` and
    :class:`~slidescope.options.EmbeddingOptions` (defaults, choices and help defined there, once); the
    fields below are the run's own. Every field is a keyword (``RunConfig(out=..., encoder=...)``).

    Attributes
    ----------
    out : results folder (see :func:`slidescope.run` for its layout).
    encoder : patch-encoder registry name (``slidescope encoders``) or ``timm:<name>``.
    model : MIL checkpoints (``best.ckpt``), averaged as an ensemble; empty: no supervised scoring.
    slide_text_model : a saved slide-text model folder (``pretrain``'s ``OUT/model``) for zero-shot.
    prompts : zero-shot prompts YAML (``classes: {name: [phrasing, ...]}``, optional ``templates``).
    weights : local weights file or folder of the encoder (offline use).
    stores : embedding-store folder; default ``OUT/stores``.
    mpp, tile_size : tile resolution (µm/px) and side (px); default: what the encoder was trained on.
    overlap, min_tissue : tile overlap (px) and minimum tissue fraction of a tile.
    edge : the strips at the right and bottom edges narrower than a tile: ``drop`` (not tiled) or ``pad``
        (tiled, white outside the slide; :func:`~slidescope.wsi.make_tile_grid`).
    downscale : how tiles read at a finer level are shrunk: ``area`` (exact) or ``jpeg-dct`` (libjpeg's scaled
        IDCT at whole factors on JPEG-tiled TIFFs, within a measured bound; :func:`~slidescope.wsi.make_tile_grid`).
    pen : pen-mark removal in tissue detection: ``auto`` (on, but off on slides that look like IHC, whose
        blue counterstain would be taken for ink), ``on`` or ``off`` (:func:`~slidescope.wsi.detect_tissue`).
    slide_mpp : level-0 pixel size (µm/px) filled in for slides whose metadata lacks a plausible one; a
        slide's own pixel size always wins (``--slide-mpp``).
    force_slide_mpp : level-0 pixel size imposed on every slide, overriding the metadata
        (``--force-slide-mpp``). Each slide's record says which pixel size was used and where it came from.
    backend : ``auto`` or a registered reader (``openslide``, ``tiffslide``, ``pil``, a plugin's).
    stain : ``None``, ``macenko`` or ``reinhard`` stain normalisation.
    dtype : stored embedding dtype, ``float16`` or ``float32``.
    precision : encoder precision (``fp32``, ``fp16``, ``bf16``); default the model's on GPU.
    device : ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
    batch_size : tiles per batch or ``"auto"``.
    num_workers : reader processes per slide (default: one per core on CPU).
    zero_shot_level : ``slide`` (slide embedding vs prompts) or ``tile`` (MI-Zero top-k pooling).
    prompt_ensemble : ``mean-embedding`` or ``sum-probability``.
    heatmaps : write heatmap PNG + GeoJSON per slide (MIL attention, zero-shot tile similarity).
    heatmap_size, cmap, normalize : heatmap thumbnail size (px), colour map, score normalisation.
    slide_encoder : a registered slide encoder (:mod:`slidescope.features.slide_encoders`); after the slides,
        each finished one's slide embedding is written into its store and ``OUT/slide_embeddings.csv`` (not
        part of the results' signature: computed again from the stores at every run).
    slide_encoder_weights : its weights file or folder (offline use; default: the Hugging Face hub).
    trust_remote_code : let PRISM's and TITAN's publishers' code run (they are built by it; see
        :func:`~slidescope.vlm.published.load_published_model`); not part of the results' signature.
    progress : show a per-slide tile progress bar (execution only, not part of the results' signature).
    slide_mpps : per-slide ``slide_mpp`` from the manifests' ``slide_mpp`` (or ``mpp``) column, keyed by the
        slide path as given to the run (:func:`~slidescope.wsi.manifest_slide_mpp`); for its slide it takes
        the place of ``slide_mpp`` and is recorded as mpp source ``manifest``. Filled in by
        :func:`resolve_config`, not a config-file key.
    """

    out: str = option(kind="path", help="Results folder (local; required, here or in --config)")
    model: tuple[str, ...] = option(
        (), kind="paths", help="MIL checkpoint (best.ckpt) or training run folder; repeat for an ensemble"
    )
    slide_text_model: str | None = option(
        None, kind="path", help="Saved slide-text model folder for zero-shot (pretrain's OUT/model)"
    )
    prompts: str | None = option(None, kind="path", help="Zero-shot prompts YAML (needs --slide-text-model)")
    stores: str | None = option(
        None,
        kind="path",
        help="Embedding-store folder; a local path or an fsspec URL (s3://bucket/stores)",
        default_text="OUT/stores",
    )
    zero_shot_level: str = option(
        "slide", kind="str", choices=("slide", "tile"), help="slide, or tile: MI-Zero top-k pooling"
    )
    prompt_ensemble: str = option("mean-embedding", kind="str", choices=_ENSEMBLES, help=one_of(_ENSEMBLES))
    heatmaps: bool = option(
        True,
        kind="bool",
        help="Heatmap PNG + GeoJSON per slide",
        default_text="on",
        flag="--heatmaps/--no-heatmaps",
    )
    heatmap_size: int = option(1024, kind="int", help="Heatmap thumbnail px")
    cmap: str = option(
        "inferno",
        kind="str",
        choices=("inferno", "viridis", "magma", "jet"),
        help="inferno, viridis, magma or jet",
    )
    normalize: str = option(
        "rank", kind="str", choices=_NORMALIZE, help=f"Heatmap scores: {one_of(_NORMALIZE)}"
    )
    slide_encoder: str | None = option(
        None,
        kind="str",
        help="Slide encoder (`slidescope encoders`): each finished slide's embedding into its store and "
        "OUT/slide_embeddings.csv",
    )
    slide_encoder_weights: str | None = option(
        None, kind="path", help="Local weights file or folder of --slide-encoder (default: the hub)"
    )
    trust_remote_code: bool = option(
        False,
        kind="bool",
        help="Allow PRISM's / TITAN's own model code to run; required for them as --slide-encoder",
        default_text="off",
        flag="--trust-remote-code",
        compare=False,
    )
    progress: bool = field(default=False, compare=False)
    slide_mpps: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def stores_dir(self) -> Path | str:
        """The store root: ``OUT/stores`` by default; a local folder or an fsspec URL (``s3://bucket/stores``)."""
        return as_location(self.stores) if self.stores else Path(self.out) / "stores"

    @property
    def score_name(self) -> str:
        """Name of the MIL scores in the stores (``scores/<name>/attention``): the checkpoints' run folder."""
        from ..mil.score import run_name

        return run_name(self.model[0]) if self.model else ""

    def to_dict(self, *, kebab: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = list(self.model)
        d.pop("progress")
        d.pop("slide_mpps")
        return {k.replace("_", "-"): v for k, v in d.items()} if kebab else d


# -- the keys a config file may hold --------------------------------------------------------------------

#: the path keys that may be fsspec URLs; every other path (results folder, models, prompts) must be local
_URL_KEYS = frozenset({"slides", "stores"})

#: key -> (kind, allowed values or None), derived from the option schema (:mod:`slidescope.options`);
#: "path"/"paths" are resolved against the config file's folder
_SPEC: dict[str, tuple[str, Callable[[], tuple[str, ...] | None]]] = {
    "slides": ("paths", lambda: None),
    **{
        f.name: (option_info(RunConfig, f.name).kind, option_info(RunConfig, f.name).allowed)
        for f in options_of(RunConfig)
    },
}

#: where the slides run (not part of the results' signature): ``executor`` local or dask, the address
#: of an existing Dask ``scheduler``, ``dask_workers`` of a LocalCluster, and a dask-jobqueue
#: ``dask_cluster`` mapping (``{kind: slurm, jobs: 8, cores: 8, memory: 64GB, ...}``)
EXECUTION_KEYS: dict[str, str] = {
    "executor": "str",
    "scheduler": "str",
    "dask_workers": "int",
    "dask_cluster": "mapping",
}

#: the keys a config file may hold, as written there (the long option names of ``slidescope run``)
CONFIG_KEYS: tuple[str, ...] = tuple(k.replace("_", "-") for k in (*_SPEC, *EXECUTION_KEYS))


def _unknown_key(key: str, where: str) -> InvalidParameterError:
    close = difflib.get_close_matches(key.replace("_", "-"), CONFIG_KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidParameterError(f"{where}: unknown key {key!r}{hint}. Valid keys: {', '.join(CONFIG_KEYS)}")


def _coerce(key: str, value: Any, where: str, base: Path | None) -> Any:
    """One config value, checked against its type and allowed values (``None`` stays ``None``)."""
    kind, allowed = _SPEC[key]
    name = key.replace("_", "-")
    if value is None:
        return None

    def bad(expected: str) -> InvalidParameterError:
        return InvalidParameterError(f"{where}: {name} must be {expected}, got {value!r}")

    def path(v: Any) -> str:
        if not isinstance(v, str | os.PathLike) or not str(v).strip():
            raise bad("a path")
        p = as_location(os.fspath(v))  # a Path, or a normalised fsspec URL (file:// is a Path)
        if isinstance(p, str):
            if key not in _URL_KEYS:
                raise InvalidParameterError(
                    f"{where}: {name} must be a local path, got the URL {v!r}: only the slides "
                    f"and the stores (--stores) may be URLs; results stay local"
                )
            return p
        return str(base / p) if base is not None and not p.is_absolute() else str(p)

    if kind == "path":
        return path(value)
    if kind == "paths":
        items = [value] if isinstance(value, str | os.PathLike) else value
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise bad("a path or a list of paths")
        return tuple(path(v) for v in items)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if kind == "batch":
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a positive whole number or 'auto'")
        return int(value)
    if not isinstance(value, str):
        raise bad("text")
    choices = allowed()
    if choices is not None and value not in choices:
        raise InvalidParameterError(f"{where}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_yaml_or_toml(p: Path) -> Any:
    """The parsed content of a ``.yaml``/``.yml``/``.toml`` file (errors say which file and why)."""
    if not p.is_file():
        raise InvalidParameterError(f"config file {p} does not exist")
    suffix = p.suffix.lower()
    text = p.read_text()
    if suffix == ".toml":
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InvalidParameterError(f"{p} is not valid TOML: {err}") from err
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InvalidParameterError(f"{p} is not valid YAML: {err}") from err
    else:
        raise InvalidParameterError(f"config file {p.name}: use a .yaml, .yml or .toml file")
    return data


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) run configuration into checked option values.

    Keys are the long option names (``tile-size`` or ``tile_size``); relative paths are relative to the
    file. Unknown keys and values of the wrong type raise :class:`InvalidParameterError`.
    """
    p = Path(path)
    data = load_yaml_or_toml(p)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"{p}: expected a mapping of option names to values, e.g. 'encoder: uni'")
    out: dict[str, Any] = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k in EXECUTION_KEYS:
            continue  # read by execution_options()
        if k not in _SPEC:
            raise _unknown_key(str(key), p.name)
        out[k] = _coerce(k, value, p.name, p.parent)
    return out


def execution_options(path: str | os.PathLike[str] | None, **given: Any) -> dict[str, Any]:
    """The execution keys (:data:`EXECUTION_KEYS`) of a config file, overridden by ``given`` values that
    are not None; checked (``executor`` must be ``local`` or ``dask``)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = load_yaml_or_toml(p)
        for key, value in data.items() if isinstance(data, Mapping) else ():
            k = str(key).replace("-", "_")
            if k in EXECUTION_KEYS:
                values[k] = value
    values.update({k: v for k, v in given.items() if v is not None})
    for k, v in values.items():
        kind = EXECUTION_KEYS.get(k)
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "mapping": isinstance(v, Mapping),
        }.get(kind or "", False)
        if not ok:
            wanted = "a positive whole number" if kind == "int" else f"a {kind}"
            raise InvalidParameterError(f"{k.replace('_', '-')} must be {wanted}, got {v!r}")
    if values.get("executor", "local") not in ("local", "dask"):
        raise InvalidParameterError(f"executor must be 'local' or 'dask', got {values['executor']!r}")
    if values.get("executor", "local") == "local" and set(values) - {"executor"}:
        extra = ", ".join(sorted(k.replace("_", "-") for k in set(values) - {"executor"}))
        raise InvalidParameterError(f"{extra} only apply with executor: dask")
    return values


def expand_models(models: Sequence[str]) -> tuple[str, ...]:
    """Checkpoints from files and run folders (``RUN/fold*/best.ckpt``, or ``RUN/best.ckpt``)."""
    out: list[str] = []
    for m in models:
        p = Path(m)
        if p.is_dir():
            found = sorted(p.glob("fold*/best.ckpt")) or sorted(p.glob("best.ckpt"))
            if not found:
                raise InvalidParameterError(
                    f"model folder {p} holds no fold*/best.ckpt or best.ckpt; give the "
                    f"checkpoint files (slidescope train writes RUN/fold<k>/best.ckpt)"
                )
            out.extend(str(f) for f in found)
        elif p.is_file():
            out.append(str(p))
        else:
            raise InvalidParameterError(
                f"model checkpoint {p} does not exist; give a best.ckpt or a training run "
                f"folder (slidescope train --out)"
            )
    return tuple(out)


def resolve_config(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    validate: bool = True,
    **options: Any,
) -> tuple[list[Path], RunConfig]:
    """Merge a config file and options (options that are not ``None`` win) into the slide list and a
    validated :class:`RunConfig`.

    Raises
    ------
    InvalidParameterError
        An unknown option, a value of the wrong type, a missing required option (``encoder``, ``out``,
        slides), a missing model or prompts file, prompts without a slide-text model (or the reverse), or
        checkpoints trained on another encoder.
    """
    from ..wsi import expand_slides, manifest_slide_mpp

    values: dict[str, Any] = load_config_file(config) if config is not None else {}
    for key, value in options.items():
        k = key.replace("-", "_")
        if k not in _SPEC and k != "progress":
            raise _unknown_key(key, "run()")
        if value is None or (
            k in ("model", "slides")
            and isinstance(value, Sequence)
            and not isinstance(value, str)
            and len(value) == 0
        ):
            continue
        values[k] = value if k == "progress" else _coerce(k, value, "options", None)
    if slides is not None and not (
        isinstance(slides, Sequence) and not isinstance(slides, str) and not slides
    ):
        values["slides"] = _coerce("slides", slides, "slides", None)
    where = f"{Path(config).name} / options" if config is not None else "options"
    for required, hint in (
        ("encoder", "--encoder NAME (see `slidescope encoders`)"),
        ("out", "--out RESULTS (the results folder)"),
    ):
        if not values.get(required):
            raise InvalidParameterError(f"{where}: give {hint}, on the command line or in the config file")
    if not values.get("slides"):
        raise InvalidParameterError(
            "give the slides: files, folders, glob patterns or a CSV manifest (column "
            "'slide'), on the command line or as 'slides:' in the config file"
        )
    slide_inputs = values.pop("slides")
    if "model" in values:
        values["model"] = expand_models(values["model"])
    cfg = RunConfig(**values)
    if validate:
        _validate(cfg)
    paths = expand_slides(slide_inputs)
    per_slide = manifest_slide_mpp(slide_inputs)
    if per_slide:
        cfg = dataclasses.replace(cfg, slide_mpps=per_slide)
    return paths, cfg


def _qc_thresholds(cfg: RunConfig) -> dict[str, float]:
    """The run's QC thresholds set instead of the defaults (checked; empty: none)."""
    from ..wsi import check_qc_thresholds

    return check_qc_thresholds(cfg.qc_thresholds)


def _validate(cfg: RunConfig) -> None:
    from ..features.encoders import get_encoder_config

    enc = get_encoder_config(cfg.encoder)  # unknown names raise with the list of encoders
    _qc_thresholds(cfg)
    if cfg.tile_size is not None and cfg.tile_size < 1:
        raise InvalidParameterError(f"tile-size must be a positive number of px, got {cfg.tile_size}")
    if cfg.mpp is not None and cfg.mpp <= 0:
        raise InvalidParameterError(f"mpp must be a positive number of µm/px, got {cfg.mpp}")
    for name, value in (("slide-mpp", cfg.slide_mpp), ("force-slide-mpp", cfg.force_slide_mpp)):
        if value is not None and not value > 0:
            raise InvalidParameterError(f"{name} must be a positive number of µm/px, got {value}")
    if cfg.slide_mpp is not None and cfg.force_slide_mpp is not None:
        raise InvalidParameterError(
            "give --slide-mpp (fills in a missing pixel size) or --force-slide-mpp "
            "(overrides every slide's), not both"
        )
    if not 0.0 <= cfg.min_tissue <= 1.0:
        raise InvalidParameterError(f"min-tissue is a fraction between 0 and 1, got {cfg.min_tissue}")
    if cfg.heatmap_size < 16:
        raise InvalidParameterError(f"heatmap-size must be at least 16 px, got {cfg.heatmap_size}")
    if cfg.weights is not None and not Path(cfg.weights).exists():
        raise InvalidParameterError(
            f"weights {cfg.weights} do not exist; give the downloaded weights file or folder"
        )
    if (cfg.prompts is None) != (cfg.slide_text_model is None):
        missing = (
            "--slide-text-model DIR (a pretrained slide-text model folder)"
            if cfg.prompts
            else "--prompts prompts.yaml (classes: {name: [phrasing, ...]})"
        )
        raise InvalidParameterError(f"zero-shot needs both --prompts and --slide-text-model; give {missing}")
    if cfg.prompts is not None:
        from ..vlm.api import load_prompts

        load_prompts(cfg.prompts)  # a missing or malformed file raises with what to fix
        model_cfg = Path(cfg.slide_text_model or "") / "config.json"
        if not model_cfg.is_file():
            raise InvalidParameterError(
                f"{cfg.slide_text_model} is not a saved slide-text model (no config.json); "
                f"give pretrain's OUT/model folder"
            )
        context = json.loads(model_cfg.read_text()).get("slide_encoder", {}).get("context_dim")
        if context is not None and int(context) != enc.embed_dim:
            raise InvalidParameterError(
                f"the slide-text model {cfg.slide_text_model} takes {context}-d tile "
                f"embeddings but {cfg.encoder!r} makes {enc.embed_dim}-d ones; use the "
                f"encoder it was pretrained on"
            )
    if cfg.model:
        from ..mil.task import load_task

        for ckpt in cfg.model:  # wrong files or another encoder's checkpoints fail here, before any slide
            load_task(ckpt, encoder=cfg.encoder, embed_dim=enc.embed_dim)


# -- what makes results valid ----------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    """``size:sha256`` of a file (sampled for large files), or of every file of a folder."""
    from ..features.store import slide_fingerprint

    if path.is_file():
        return slide_fingerprint(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(slide_fingerprint(f).encode())
        return "dir:" + h.hexdigest()[:32]
    return "missing"


_SIGNATURES: dict[RunConfig, dict[str, Any]] = {}


def result_signature(cfg: RunConfig) -> dict[str, Any]:
    """What a finished slide's results depend on (cached per configuration in each process).

    Tiling defaults are resolved (``mpp=None`` and ``mpp=<the encoder's>`` are the same), model and
    weights files are identified by their content, prompts by their parsed classes and templates.
    ``slide_mpp`` is not part of it: it only concerns slides without a pixel size, and their records say
    that theirs was filled in (:func:`~slidescope.pipeline.plan_slide` compares it per slide).
    """
    if cfg in _SIGNATURES:
        return _SIGNATURES[cfg]
    from ..features.encoders import get_encoder_config

    enc = get_encoder_config(cfg.encoder)
    sig: dict[str, Any] = {
        "encoder": cfg.encoder,
        "weights": _file_digest(Path(cfg.weights)) if cfg.weights else None,
        "tiling": {
            "mpp": cfg.mpp if cfg.mpp is not None else enc.mpp,
            "tile_size": cfg.tile_size if cfg.tile_size is not None else enc.tile_size,
            "overlap": cfg.overlap,
            "min_tissue": cfg.min_tissue,
            **({"edge": cfg.edge} if cfg.edge != "drop" else {}),  # absent for drop: older records stay valid
            **({"downscale": cfg.downscale} if cfg.downscale != "area" else {}),  # likewise for area
            "pen": cfg.pen,
            # the learned models and their weights only where used: older records stay valid
            **({"tissue": cfg.tissue} if cfg.tissue != "classic" else {}),
            **({"qc": cfg.qc} if cfg.qc != "off" else {}),  # absent for off: older records stay valid
            **({"qc_model": cfg.qc_model} if cfg.qc != "off" and cfg.qc_model != "none" else {}),
            **({"qc_thresholds": qc_set} if (qc_set := _qc_thresholds(cfg)) and cfg.qc != "off" else {}),
            **(
                {"segmenter_weights": _file_digest(Path(cfg.segmenter_weights))}
                if cfg.segmenter_weights
                else {}
            ),
            # --slide-mpp only matters to the slides without a pixel size: each record says which
            # pixel size it used (see plan_slide), so it is not in the signature of every slide
            "force_slide_mpp": cfg.force_slide_mpp,
            "backend": cfg.backend,
        },
        "stain": cfg.stain,
        "dtype": cfg.dtype,
        "precision": cfg.precision,
        "model": [{"path": str(Path(m).resolve()), "digest": _file_digest(Path(m))} for m in cfg.model],
        "zero_shot": None,
        "heatmaps": {"size": cfg.heatmap_size, "cmap": cfg.cmap, "normalize": cfg.normalize}
        if cfg.heatmaps
        else None,
    }
    if cfg.prompts is not None and cfg.slide_text_model is not None:
        from ..vlm.api import load_prompts

        p = load_prompts(cfg.prompts)
        sig["zero_shot"] = {
            "slide_text_model": str(Path(cfg.slide_text_model).resolve()),
            "digest": _file_digest(Path(cfg.slide_text_model)),
            "classes": p.classes,
            "templates": p.templates,
            "level": cfg.zero_shot_level,
            "ensemble": cfg.prompt_ensemble,
        }
    sig = json.loads(json.dumps(sig))  # the form it takes in a JSON record
    _SIGNATURES[cfg] = sig
    return sig


def signature_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ (all of them when ``old`` is missing)."""
    if not isinstance(old, Mapping):
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
