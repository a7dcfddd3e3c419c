"""What the "Analyse" widget runs, without Qt: slide -> (cached) embeddings -> MIL or zero-shot scores.

:func:`run_analysis` is a generator: it yields :class:`Progress` between steps (and while the
embeddings are extracted) and returns an :class:`AnalysisResult`, so napari's ``thread_worker``
runs it off the UI thread and a plain ``for`` loop runs it in a script or a test. Everything it
computes comes from the public API (:func:`~slidescope.features.extract_features`,
:func:`~slidescope.mil.score`, :func:`~slidescope.vlm.zero_shot`); the scores land in the slide's
store, where :func:`~slidescope.viewer._results.result_layers` reads them back as layers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._compat import renamed_attribute, renamed_kwargs
from ..errors import InvalidParameterError
from ..options import DEFAULT_OFFLINE_ENCODER, EmbeddingOptions, TilingOptions
from ._paths import viewer_cache_dir
from ._slide_model import FewShotRequest, classify, prepare_support, tile_geometry

__all__ = [
    "AnalysisRequest",
    "AnalysisResult",
    "Progress",
    "parse_prompts",
    "resolve_store",
    "cached_embeddings",
    "checkpoints_of",
    "run_analysis",
]

#: how often (s) the progress is reported while the embeddings are extracted
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class AnalysisRequest:
    """What to run on one slide.

    Attributes
    ----------
    slide : the slide file.
    encoder : patch encoder registry name (``he-descriptor`` runs offline, without weights).
    store : a folder of stores (the slide's store is ``<folder>/<slide>.zarr``) or one slide store;
        ``None``: the viewer's cache folder (:func:`~slidescope.viewer._paths.viewer_cache_dir`).
    checkpoint : a trained MIL checkpoint (``best.ckpt``) or a training run folder (``RUN/fold*/best.ckpt``,
        all folds averaged): supervised scores and attention, exactly as ``slidescope run --model`` gives
        them (same checkpoint resolution, :func:`slidescope.pipeline.expand_models`, same ensemble).
    prompts : for zero-shot instead: a prompts YAML (a ``Path``), a ``{class: [phrasings]}`` mapping,
        or text typed in the widget (a ``str``, see :func:`parse_prompts`).
    slide_text_model : the saved slide-text model directory zero-shot needs (formerly ``slidetext_model``,
        still accepted for one release with a DeprecationWarning).
    few_shot : instead: a slide encoder and a labelled support set
        (:class:`~slidescope.viewer._slide_model.FewShotRequest`); the slide's class probabilities, no tile map.
    weights : encoder weights (file, directory or hub id) for encoders that need them.
    slide_mpp : level-0 µm/px when the file has none.
    num_workers : reader processes for extraction (0: in the worker thread; safest inside a GUI).
    pen : pen-mark removal in tissue detection: ``"auto"`` (off on IHC slides), ``"on"`` or ``"off"``
        (see :func:`~slidescope.wsi.detect_tissue`).
    min_tissue, overlap : a tile's minimum tissue fraction and the pixels neighbouring tiles share (the
        schema's defaults, as for a batch run; see :class:`~slidescope.options.TilingOptions`).
    allow_darkfield : analyse a slide whose background is dark, which tissue detection otherwise refuses as a
        fluorescence image stored as RGB (``--allow-darkfield`` of a batch run; the widget's "Dark background"
        box).
    """

    slide: Path
    encoder: str = DEFAULT_OFFLINE_ENCODER
    store: Path | None = None
    checkpoint: Path | None = None
    prompts: Path | Mapping[str, Any] | str | None = None
    slide_text_model: Path | None = None
    few_shot: FewShotRequest | None = None
    weights: str | None = None
    slide_mpp: float | None = None
    device: str = "cpu"
    num_workers: int = 0  # unlike a batch run: reading in the worker thread is safest inside a GUI
    batch_size: int | str = EmbeddingOptions.batch_size
    pen: str = TilingOptions.pen
    min_tissue: float = TilingOptions.min_tissue
    overlap: int = TilingOptions.overlap
    allow_darkfield: bool = TilingOptions.allow_darkfield

    @property
    def mode(self) -> str:
        """``"mil"`` with a checkpoint, ``"few-shot"`` with a slide encoder, ``"zero-shot"`` with prompts."""
        if self.checkpoint is not None:
            return "mil"
        return "few-shot" if self.few_shot is not None else "zero-shot"


# the old spelling, for one release (docs/GLOSSARY.md)
_old_names = renamed_kwargs(slidetext_model="slide_text_model")
AnalysisRequest.__init__ = _old_names(AnalysisRequest.__init__)  # type: ignore
AnalysisRequest.slidetext_model = renamed_attribute("slidetext_model", "slide_text_model")  # type: ignore


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``done`` of ``total`` units (``total == 0``: no count for this step)."""

    step: str
    done: int = 0
    total: int = 0

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


@dataclass
class AnalysisResult:
    """What a run produced: the store with the new scores, and what to show."""

    slide: Path
    store: Path
    mpp: tuple[float, float]
    tissue: Any  # slidescope.wsi.TissueMask
    scores: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    reused_embeddings: bool = False
    cancelled: bool = False
    seconds: float = 0.0
    #: after a cancel: tiles whose embeddings were saved (whole chunks only), of how many; None: unknown
    kept_tiles: tuple[int, int] | None = None
    #: tiles saved at a time (a chunk): a cancel keeps only the chunks finished before it
    chunk_tiles: int | None = None
    #: what ran, for the run's layer names: the MIL run name, or ``zero-shot <prompts file stem>``
    label: str = ""
    #: zero-shot: the multiplier of the cosines before the softmax (the slide-text model's), for region scores
    logit_scale: float | None = None

    @property
    def what(self) -> str:
        """The model or prompt set of the run (``label``, else read from the score names)."""
        if self.label:
            return self.label
        if self.classes:
            return "zero-shot"
        return self.scores[0].split("/")[0] if self.scores else "scores"

    def cancel_message(self) -> str:
        """What a cancel kept, truthfully: embeddings are saved a whole chunk at a time."""
        if self.kept_tiles is None:
            return (
                "cancelled: the embeddings of every chunk of tiles finished before the cancel are kept; "
                "Analyse again resumes after them"
            )
        kept, total = self.kept_tiles
        chunk = f" (they are saved {self.chunk_tiles} tiles at a time)" if self.chunk_tiles else ""
        if kept == 0:
            return (
                f"cancelled before the first chunk of tiles was saved{chunk}: nothing is kept, "
                f"Analyse again starts from tile 0 of {total}"
            )
        return f"cancelled: the embeddings of {kept} of {total} tiles are kept{chunk}; Analyse again resumes there"


def parse_prompts(text: str) -> dict[str, list[str]]:
    """Class prompts typed in the widget: one class per line, ``class: phrasing; phrasing``.

    A line without a colon is a class whose only phrasing is its name. Blank lines and lines
    starting with ``#`` are skipped.

    Examples
    --------
    >>> parse_prompts("tumour: carcinoma; sheets of atypical cells\\nnormal: benign stroma")
    {'tumour': ['carcinoma', 'sheets of atypical cells'], 'normal': ['benign stroma']}
    """
    classes: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        phrasings = [p.strip() for p in rest.split(";") if p.strip()] if rest.strip() else [name]
        if name:
            classes.setdefault(name, []).extend(phrasings)
    if not classes:
        raise InvalidParameterError(
            "the prompts are empty: type one class per line as `class: phrasing; another phrasing`, e.g. "
            "`tumour: invasive carcinoma` and `normal: benign stroma`, or choose a prompts YAML file"
        )
    return classes


def _fingerprint(path: Path) -> str:
    from ..features.store import slide_fingerprint

    return slide_fingerprint(path)


def resolve_store(store: Path | None, slide_path: Path) -> tuple[Path, Path]:
    """``(folder of stores, this slide's store path)`` for ``store`` as given in a request.

    A slide store given explicitly (``<name>.zarr`` with a ``zarr.json``) must have been made from
    this very slide (same fingerprint), else :class:`~slidescope.features.StoreError` says so.
    """
    from ..features.store import StoreError, open_store, store_path

    if store is None:
        root = viewer_cache_dir() / "stores"
        return root, store_path(root, slide_path)
    store = Path(store).expanduser()
    if (store / "zarr.json").exists():
        attrs = open_store(store).attrs.get("slide", {})
        if attrs.get("fingerprint") != _fingerprint(slide_path):
            raise StoreError(
                f"the store {store.name} was made from {attrs.get('name', 'another slide')} "
                f"({attrs.get('fingerprint', 'no fingerprint')}), not from {slide_path.name}: choose this slide's "
                f"store, or a folder of stores (slidescope then finds or makes {slide_path.stem}.zarr in it)"
            )
        if store.name != store_path(store.parent, slide_path).name:
            raise StoreError(
                f"the store {store.name} belongs to {slide_path.name} but is not named after it; "
                f"rename it to {store_path(store.parent, slide_path).name} or choose its folder"
            )
        return store.parent, store
    if store.suffix == ".zarr" or (store.exists() and not store.is_dir()):
        raise StoreError(
            f"{store} is not a slidescope store: choose a folder of stores or a <slide>.zarr store"
        )
    return store, store_path(store, slide_path)


def cached_embeddings(store: Path, slide_path: Path, encoder: str) -> bool:
    """True when ``store`` holds complete ``encoder`` embeddings of this very slide (same fingerprint)."""
    from ..features.store import StoreError, open_store

    if not (store / "zarr.json").exists():
        return False
    try:
        opened = open_store(store, encoder=encoder)
    except StoreError:
        return False
    return (
        opened.attrs.get("slide", {}).get("fingerprint") == _fingerprint(slide_path)
        and encoder in opened.encoders()
    )


def _check_model(request: AnalysisRequest, embed_dim: int) -> Any:
    """Load the checkpoint or slide-text model now, so a mismatch fails before any extraction."""
    if request.mode == "mil":
        from ..mil import load_task

        # every fold: a fold trained on another encoder must fail here too, as in a batch run
        return [
            load_task(path, encoder=request.encoder, embed_dim=embed_dim)
            for path in checkpoints_of(request.checkpoint)
        ]
    if request.few_shot is not None:
        return prepare_support(request.few_shot, Path(request.slide), request.encoder, request.device)
    if request.slide_text_model is None:
        raise InvalidParameterError(
            "zero-shot needs a slide-text model: choose its folder (the `model` folder "
            "written by `slidescope pretrain`, e.g. slidescope-demo/runs/slidetext/model)"
        )
    from ..vlm import SlideTextModel

    model = SlideTextModel.load(request.slide_text_model, map_location=request.device)
    dim = model.slide_encoder.config.context_dim
    if dim != embed_dim:
        raise InvalidParameterError(
            f"the slide-text model {Path(request.slide_text_model).name} was pretrained on {dim}-d tile embeddings but "
            f"{request.encoder!r} gives {embed_dim}-d: choose the encoder it was pretrained on"
        )
    return model


def checkpoints_of(model: Path | str | None) -> list[str]:
    """The checkpoints a MIL model path stands for, resolved as ``slidescope run --model`` resolves them:
    a ``best.ckpt`` file, or a training run folder's ``fold*/best.ckpt`` (else its ``best.ckpt``)."""
    from ..pipeline import expand_models

    return list(expand_models([str(model)])) if model is not None else []


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device {device!r} asked for, but torch sees no CUDA GPU here: choose cpu"
        )


def _extract(
    slide: Any, tissue: Any, request: AnalysisRequest, root: Path, cancel: threading.Event
) -> Generator[Progress, None, Any]:
    """Tile and embed the slide (:func:`~slidescope.pipeline.embed_slide`) in a helper thread, reporting its
    progress every :data:`POLL_SECONDS`; returns the extraction's result."""
    from ..features import create_encoder
    from ..pipeline import embed_slide

    encoder = create_encoder(request.encoder, weights=request.weights, device=request.device)
    done = [0, 0]
    outcome: dict[str, Any] = {}

    def report(tiles_done: int, tiles_total: int) -> None:
        done[0], done[1] = tiles_done, tiles_total

    def on_step(step: str, value: Any) -> None:
        if step == "grid":
            done[1] = len(value)

    def work() -> None:
        try:
            outcome["result"] = embed_slide(
                slide,
                encoder,
                stores=root,
                tiling=TilingOptions(
                    pen=request.pen,
                    min_tissue=request.min_tissue,
                    overlap=request.overlap,
                    **tile_geometry(request.few_shot),  # a slide encoder's tiles (default: the encoder's)
                ),
                mask=tissue,
                batch_size=request.batch_size,
                num_workers=request.num_workers,
                progress=False,
                on_progress=report,
                should_stop=cancel.is_set,
                on_step=on_step,
            ).result
        except BaseException as err:  # noqa: BLE001 - re-raised in the generator's thread below
            outcome["error"] = err

    thread = threading.Thread(target=work, name="slidescope-extract", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            yield Progress("extracting embeddings", done[0], done[1])
    finally:
        if thread.is_alive():  # the consumer stopped early: stop the extraction at its next batch
            cancel.set()
            thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_analysis(
    request: AnalysisRequest, *, cancel: threading.Event | None = None
) -> Generator[Progress, None, AnalysisResult]:
    """Run one analysis; yields :class:`Progress`, returns :class:`AnalysisResult`.

    Steps: check the model against the encoder (fails fast on a checkpoint for another encoder or
    an empty prompt set), find the tissue, reuse the store's embeddings when they are complete and
    from this slide (else tile and extract, cancellable between batches), then score with the MIL
    checkpoint (:func:`slidescope.mil.score`: ``<run>/attention``) or zero-shot at tile level
    (:func:`slidescope.vlm.zero_shot`: ``zero-shot/<class>``), both written into the store, or classify the
    slide with a slide encoder and few-shot against a support set (:mod:`~slidescope.viewer._slide_model`: the
    support set and the slide encoder's weights are checked first; class probabilities only, no tile scores).

    Raises
    ------
    SlidescopeError
        Any input that cannot work, with a message that says what to do.
    """
    from ..features import get_encoder_config
    from ..wsi import detect_tissue, open_slide

    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    slide_path = Path(request.slide)
    yield Progress("checking the inputs")
    prompts = None
    if request.mode == "zero-shot":
        from ..vlm import load_prompts

        source = request.prompts
        if source is None or isinstance(source, str):  # text typed in the widget (a file comes as a Path)
            source = parse_prompts(source or "")
        prompts = load_prompts(source)
    _check_device(request.device)
    config = get_encoder_config(request.encoder)
    model = _check_model(request, config.embed_dim)
    root, store = resolve_store(request.store, slide_path)

    with open_slide(slide_path, slide_mpp=request.slide_mpp) as slide:
        mpp = slide.mpp
        yield Progress("finding the tissue")
        tissue = detect_tissue(slide, pen=request.pen, allow_darkfield=request.allow_darkfield)
        result = AnalysisResult(
            slide=slide_path, store=store, mpp=(float(mpp[0]), float(mpp[1])), tissue=tissue
        )
        if cached_embeddings(store, slide_path, request.encoder):
            result.reused_embeddings = True
        else:
            yield Progress("tiling")
            extraction = yield from _extract(slide, tissue, request, root, cancel)
            if extraction.status == "cancelled":
                result.cancelled = True
                result.kept_tiles, result.chunk_tiles = kept_embeddings(store, request.encoder)
                result.seconds = time.perf_counter() - t0
                return result
    if cancel.is_set():
        result.cancelled = True
        result.seconds = time.perf_counter() - t0
        return result

    yield Progress("scoring")
    if request.mode == "mil":
        # from the module itself: once imported, `slidescope.mil.score` the module shadows the lazy export
        from ..mil.score import run_name, score

        checkpoints = checkpoints_of(request.checkpoint)
        name = run_name(checkpoints[0])  # the name `slidescope run` writes the ensemble's scores under
        (row,) = score(list(checkpoints), [store], name=name, device=request.device)
        result.scores = [f"{name}/attention"]
        result.label = name
        result.probabilities = dict(row.probs)
        result.summary = _summary(f"{name}: predicted {row.predicted}", row.probs)
    elif request.few_shot is not None:
        few = request.few_shot
        probs, predicted = classify(model, store, request.encoder, few.method, request.device)
        result.label = f"{few.slide_encoder} {few.method} few-shot"
        result.probabilities = probs
        result.summary = _summary(f"{result.label}: predicted {predicted}", probs)
        if model.left_out:
            result.summary += f"; its own {model.left_out} support row(s) left out"
    else:
        from ..vlm import zero_shot
        from ..vlm.api import SCORES_PREFIX

        (row,) = zero_shot(
            [store], prompts, model=model, encoder=request.encoder, level="tile", device=request.device
        )
        result.classes = list(prompts.names)
        result.scores = [f"{SCORES_PREFIX}/{c}" for c in result.classes]
        typed = request.prompts is None or isinstance(request.prompts, (str, Mapping))
        result.label = "zero-shot " + ("typed prompts" if typed else Path(str(request.prompts)).stem)
        result.logit_scale = float(model.scale().detach())
        result.probabilities = dict(row.probs)
        result.summary = _summary(f"zero-shot: best match {row.predicted}", row.probs)
    result.seconds = time.perf_counter() - t0
    return result


def kept_embeddings(store: Path, encoder: str) -> tuple[tuple[int, int] | None, int | None]:
    """``((tiles whose embeddings are saved, tiles), tiles per chunk)`` of an interrupted extraction, read from
    the chunk markers of the store's tiling that holds ``encoder`` (``tilings/<key>/features/<encoder>/done``);
    ``(None, None)`` where they cannot be read."""
    import zarr

    try:
        root: Any = zarr.open_group(str(store), mode="r")
        tilings = [g for _, g in sorted(root["tilings"].groups())] if "tilings" in root else [root]
        for tiling in tilings:
            if "features" in tiling and encoder in tiling["features"]:
                features: Any = tiling["features"][encoder]
                n = int(tiling.attrs.get("n_tiles", 0))
                rows = int(features.attrs["chunk_rows"])
                done = np.asarray(features["done"][:]).astype(bool)
                break
        else:
            return None, None
    except Exception:  # noqa: BLE001 - a damaged store: say so vaguely, never fail the cancel
        return None, None
    sizes = np.minimum(rows, n - np.arange(len(done)) * rows).clip(min=0)
    return (int(sizes[done].sum()), n), rows


def _summary(head: str, probs: Mapping[str, float]) -> str:
    if not probs:
        return head
    return head + " (" + ", ".join(f"{k} {v:.2f}" for k, v in probs.items()) + ")"
