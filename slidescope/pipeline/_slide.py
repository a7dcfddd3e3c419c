"""One slide through the whole pipeline: :func:`process_slide`, a module-level, picklable function.

``process_slide(slide, config) -> SlideOutcome`` opens the slide, finds the tissue, tiles it, embeds
the tiles into the slide's store (cached and resumable), scores it with the MIL checkpoints and/or
zero-shot, draws the heatmaps and writes the slide's record. It never raises for a bad slide: the
failure is recorded (error class and message) and returned. It only needs the slide path and the
frozen :class:`~slidescope.pipeline.RunConfig`, so any executor (this process, a process pool, Dask
workers) can run it, provided they share the results folder.

Done-ness, per slide, in the results folder ``OUT``:

* every output (heatmap PNG/GeoJSON, tissue GeoJSON) is written to a hidden temporary name
  (``.<key>.<what>.partial-<pid><ext>``) and renamed into place with ``os.replace``;
* the record ``OUT/slides/<key>.json`` is written last, the same way. A slide is finished only when
  its record says ``"status": "done"``, the record's result signature matches the configuration, the
  slide file is the same (size and modification time, else its sampled-content fingerprint) and every
  output it lists exists;
* the record is claimed (``OUT/slides/<key>.json.lock``) while the slide is processed, so two runs on
  one results folder never process the same slide; the claim of a dead process is taken over.

A run killed at any moment therefore leaves either the previous record or none: the rerun redoes the
slide (the embedding store resumes from its last complete chunk).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._location import is_url
from ..errors import SlidescopeError
from ._config import RunConfig, result_signature, signature_changes

log = logging.getLogger(__name__)

__all__ = ["SlideOutcome", "process_slide", "plan_slide", "record_path", "RECORD_SCHEMA"]

RECORD_SCHEMA = 1

#: a slide's outcome: ``done`` (processed now), ``skipped`` (finished by an earlier run, still valid),
#: ``failed`` (error recorded), ``claimed`` (another live run is processing it), ``interrupted``
STATUSES = ("done", "skipped", "failed", "claimed", "interrupted", "pending")


@dataclass
class SlideOutcome:
    """What happened to one slide (a plain, picklable record; ``to_dict`` is its JSON form).

    Attributes
    ----------
    slide : the slide path as given.
    key : its name in the results (file name without the slide extension).
    status : ``"done"``, ``"skipped"``, ``"failed"``, ``"claimed"`` or ``"interrupted"``.
    seconds : wall time spent on it in this run; ``timings`` per stage (open, tissue, tiles, extract,
        score, zero_shot, heatmaps).
    n_tiles : tissue tiles; ``computed_tiles`` those embedded in this run (the rest came from the store).
    tiles_per_s : embedding throughput of this run (0 when all came from the cache).
    effective_mpp : (x, y) µm/px of the tiles as cut (see :class:`~slidescope.wsi.TileGrid`).
    slide_mpp, mpp_source : the level-0 (x, y) µm/px used and where it came from: ``"file metadata: <which
        tags>"``, ``"filled in (--slide-mpp)"`` (the file has none) or ``"forced (--force-slide-mpp)"``.
    qc : the tile QC summary with ``--qc flag`` or ``exclude`` (:func:`~slidescope.wsi.qc_summary`: policy,
        tissue_mm2, n_tiles, flagged_fraction per check, focus_quantiles...; before any tile was excluded).
    error_class, error_message : for failures: the exception's class name and its message.
    outputs : name -> path of each output (relative to the results folder when inside it).
    attempts : how many times the slide was started in this run (more than 1 when a Dask worker died).
    predictions : the slide's row of ``predictions.csv`` (``mil_prob_<class>``, ``mil_predicted``,
        ``zero_shot_prob_<class>``, ``zero_shot_predicted``...).
    """

    slide: str
    key: str
    status: str
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    n_tiles: int = 0
    computed_tiles: int = 0
    tiles_per_s: float = 0.0
    effective_mpp: list[float] | None = None
    slide_mpp: list[float] | None = None
    mpp_source: str | None = None
    tissue_mm2: float | None = None
    qc: dict[str, Any] | None = None
    error_class: str | None = None
    error_message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)
    finished: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideOutcome:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def slide_key(slide: str | os.PathLike[str]) -> str:
    from ..features.store import slide_key as _key

    return _key(slide)


def record_path(out: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Path:
    """``OUT/slides/<key>.json``: the slide's record, written last."""
    return Path(out) / "slides" / f"{slide_key(slide)}.json"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# -- atomic files -----------------------------------------------------------------------------------------

_PARTIAL = re.compile(r"\.partial-(\d+)")


def _partial_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; rename it into place if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


#: errno values of a full disk or quota
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def output_error(err: OSError, what: Path | str) -> SlidescopeError | OSError:
    """A slidescope error for an output that cannot be written for lack of space (``DiskFullError``, whose
    message says what to do); any other ``OSError`` as it is."""
    from ..features.store import DiskFullError

    if isinstance(err, SlidescopeError) or err.errno not in _DISK_FULL:
        return err
    return DiskFullError(
        f"no space left on the device to write {err.filename or what} ({err.strerror}). Free "
        f"some space (or give another --out / --stores) and run the same command again: finished "
        f"slides are kept."
    )


def remove_stale_partials(folder: Path, stem: str) -> None:
    """Partial files ``.<stem>.*partial-<pid>*`` in ``folder`` left by a killed process (those of a live process
    other than this one are left alone)."""
    from ..features.store import pid_alive

    if not folder.is_dir():
        return
    for p in folder.glob(f".{glob_escape(stem)}.*partial-*"):
        m = _PARTIAL.search(p.name)
        if m and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _remove_stale_partials(out: Path, key: str) -> None:
    """A slide's partial files left by a killed process."""
    for folder in (out / "slides", out / "heatmaps", out / "tissue"):
        remove_stale_partials(folder, key)


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _rel(path: Path | str, out: Path) -> str:
    """An output's location in the record: relative to the results folder when inside it; URLs as they are."""
    if isinstance(path, str):
        return path
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path.resolve())


def _abs(path: str, out: Path) -> Path | str:
    if is_url(path):
        return path
    p = Path(path)
    return p if p.is_absolute() else out / p


def _exists(loc: Path | str) -> bool:
    from .._location import exists

    return exists(loc)


def _safe(name: str) -> str:
    """A class or run name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


# -- per-process caches (models are loaded once per process, whatever the executor) ----------------------

_ENCODERS: dict[tuple[Any, ...], Any] = {}
_SLIDE_TEXT: dict[tuple[str, str], Any] = {}


def get_encoder(cfg: RunConfig):
    """The run's patch encoder, built once per process."""
    key = (cfg.encoder, cfg.weights, cfg.device, cfg.precision)
    if key not in _ENCODERS:
        from ..features import create_encoder

        _ENCODERS[key] = create_encoder(
            cfg.encoder, weights=cfg.weights, device=cfg.device, precision=cfg.precision
        )
    return _ENCODERS[key]


def _device(cfg: RunConfig) -> str:
    from ..features.encoders import resolve_device

    return str(resolve_device(cfg.device))


def _slide_text_model(cfg: RunConfig):
    key = (str(cfg.slide_text_model), _device(cfg))
    if key not in _SLIDE_TEXT:
        from ..vlm.model import SlideTextModel

        _SLIDE_TEXT[key] = SlideTextModel.load(cfg.slide_text_model, map_location=key[1])  # type: ignore[arg-type]
    return _SLIDE_TEXT[key]


# -- the slide's pixel size --------------------------------------------------------------------------------

MPP_FROM_FILE = "file metadata"
MPP_FILLED = "filled in (--slide-mpp)"
MPP_FORCED = "forced (--force-slide-mpp)"
MPP_MANIFEST = "manifest (slide_mpp column)"


def _fill_in(slide: str | os.PathLike[str], cfg: RunConfig) -> tuple[float | None, str]:
    """The pixel size filled in for ``slide`` if its file has none, and what says so: the manifest's
    ``slide_mpp`` column for this slide, else ``--slide-mpp`` (the name is ``open_slide``'s
    ``slide_mpp_source``)."""
    from ..wsi import MPP_FILLED_IN, MPP_FROM_MANIFEST

    value = cfg.slide_mpps.get(str(slide))
    return (value, MPP_FROM_MANIFEST) if value is not None else (cfg.slide_mpp, MPP_FILLED_IN)


def _mpp_source(slide_obj: Any) -> str:
    from ..wsi import MPP_FILLED_IN, MPP_FROM_MANIFEST

    source = slide_obj.mpp_source
    if source == "user":
        return MPP_FORCED
    if source == MPP_FILLED_IN:
        return MPP_FILLED
    if source == MPP_FROM_MANIFEST:
        return MPP_MANIFEST
    return f"{MPP_FROM_FILE}: {source}"


def _mpp_change(rec: dict[str, Any], cfg: RunConfig, slide: str | os.PathLike[str] = "") -> str | None:
    """Why a finished slide's pixel size would differ under ``cfg`` (None: it would not).

    ``--force-slide-mpp`` is in the result signature; ``--slide-mpp`` and the manifest's ``slide_mpp`` column
    only matter to the slides whose record says their pixel size was filled in (a slide whose file gives
    one is not redone because it was given)."""
    from ..wsi import MPP_FROM_MANIFEST

    source = rec.get("mpp_source")
    if cfg.force_slide_mpp is not None or not isinstance(source, str) or source.startswith(MPP_FORCED):
        return None  # the signature decides (and records of an older slidescope had their signature change)
    if source.startswith((MPP_FILLED, MPP_MANIFEST)):
        used = rec.get("slide_mpp") or [None]
        now, where = _fill_in(slide, cfg)
        if now is None or used[0] is None or abs(float(used[0]) - now) > 1e-12:
            name = "the manifest's slide_mpp" if where == MPP_FROM_MANIFEST else "--slide-mpp"
            return f"its pixel size was filled in as {used[0]} µm/px, now {name} is {now}"
    return None


# -- planning --------------------------------------------------------------------------------------------


def read_record(out: Path, slide: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = record_path(out, slide)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


def plan_slide(slide: str | os.PathLike[str], cfg: RunConfig) -> tuple[str, str, dict[str, Any] | None]:
    """What a run would do with ``slide``: ``("skip" | "do" | "retry", reason, record)``.

    ``skip`` only when the slide's record says done, with this configuration's result signature, the
    same slide file, and every output present (the embeddings complete in the store).
    """
    out = cfg.out_dir
    rec = read_record(out, slide)
    if rec is None:
        return "do", "new", None
    status = rec.get("status")
    if status == "failed":
        return "retry", f"failed before: {rec.get('error_class')}", rec
    if status != "done":
        return "do", "its record is unreadable", None
    changes = signature_changes(rec.get("signature"), result_signature(cfg))
    if changes:
        return "do", f"configuration changed ({', '.join(changes)})", rec
    mpp_change = _mpp_change(rec, cfg, slide)
    if mpp_change:
        return "do", mpp_change, rec
    stat = file_stat(slide)
    if stat is None:
        return "do", "the slide file is missing or unreadable", rec
    if stat != rec.get("file") and (is_url(slide) or rec.get("fingerprint") != _fingerprint(slide)):
        return "do", "the slide file changed", rec  # (same size and time, or same sampled content: unchanged)
    for name, rel in (rec.get("outputs") or {}).items():
        if not _exists(_abs(rel, out)):
            return "do", f"output missing: {name}", rec
    from ..features.store import store_path

    store = rec.get("outputs", {}).get("store")
    if store != _rel(store_path(cfg.stores_dir, slide), out):
        return "do", "its store is in another folder (--stores changed)", rec
    problem = _store_problem(_abs(store, out), cfg.encoder, rec.get("fingerprint"))
    if problem is not None:
        return "do", problem, rec
    return "skip", f"finished {rec.get('finished', '')}".strip(), rec


def file_stat(slide: str | os.PathLike[str]) -> list[Any] | None:
    """``[size, modification time]`` of a slide file (size and ETag/mtime for a URL); None if unreadable.

    A rerun compares it with the record first (cheap for thousands of slides); only when it differs is the
    sampled-content fingerprint computed, so a copied or touched but unchanged slide is not redone."""
    text = str(slide)
    if is_url(slide):
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(text)
            info = fs.info(path)
        except Exception:  # noqa: BLE001 - whatever the remote says (or fails with) means "cannot tell"
            return None
        tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
        return [info.get("size"), str(tag)]
    try:
        if os.path.isdir(text):  # a DICOM-WSI series folder: its .dcm files together
            stats = [os.stat(f) for f in sorted(Path(text).glob("*.dcm"))]
            return [
                sum(st.st_size for st in stats),
                max((st.st_mtime_ns for st in stats), default=0),
                len(stats),
            ]
        st = os.stat(text)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _fingerprint(slide: str | os.PathLike[str]) -> str | None:
    from ..features.store import slide_fingerprint

    if is_url(slide):
        return None
    try:
        if os.path.isdir(
            slide
        ):  # a DICOM-WSI series folder: the file open_slide opens (what its store records)
            first = sorted(Path(slide).glob("*.dcm"))
            return slide_fingerprint(first[0] if first else slide)  # or the folder itself (OME-Zarr)
        return slide_fingerprint(slide)
    except OSError:
        return None


def _store_problem(store: Path | str, encoder: str, fingerprint: str | None) -> str | None:
    """Why the slide's store cannot be trusted for a skip (None: it can).

    The embeddings must be complete and read back whole (every chunk present, checksums and metadata
    valid: a damaged store is redone, not skipped), and made from the slide file the record describes
    (its fingerprint)."""
    from ..features.store import IncompleteStoreError, StoreCorruptError, StoreError, open_store

    try:
        st = open_store(store, encoder=encoder)
        st.verify(encoder)
    except IncompleteStoreError:
        return "its embeddings are incomplete"
    except StoreCorruptError as err:
        return f"its store is damaged ({err})"
    except (StoreError, OSError, ValueError) as err:
        return f"its embeddings cannot be read ({err})"
    made_from = st.attrs.get("slide", {}).get("fingerprint")
    if fingerprint is not None and made_from != fingerprint:
        return f"its store was made from another slide file (fingerprint {made_from}, the record has {fingerprint})"
    return None


def skipped_outcome(slide: str | os.PathLike[str], record: dict[str, Any]) -> SlideOutcome:
    """The outcome of a slide finished by an earlier run (its record, with status ``skipped``)."""
    out = SlideOutcome.from_dict({**record, "slide": str(slide)})
    out.status = "skipped"
    return out


# -- processing ------------------------------------------------------------------------------------------


class _Timer:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t, 4)


def process_slide(slide: str | os.PathLike[str], config: RunConfig) -> SlideOutcome:
    """Run the whole pipeline on one slide and write its outputs and record (see the module docstring).

    Parameters
    ----------
    slide : path of the slide file.
    config : the run's :class:`RunConfig`.

    Returns
    -------
    SlideOutcome
        ``status`` is ``"done"`` or ``"failed"`` (error class and message recorded), or ``"claimed"``
        when another live run holds this slide (nothing is written then).

    Notes
    -----
    Module-level and free of global state other than per-process model caches, so it pickles and runs
    in any worker process. ``KeyboardInterrupt`` propagates (after partial files are removed); no
    record is written for an interrupted slide.
    """
    from ..features.store import SlideClaimedError, claim

    t0 = time.perf_counter()
    slide = str(slide)
    out = config.out_dir
    key = slide_key(slide)
    outcome = SlideOutcome(slide=slide, key=key, status="done")
    record = record_path(out, slide)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with claim(record):
            _remove_stale_partials(out, key)
            try:
                _pipeline(slide, config, outcome)
            except SlideClaimedError:  # another run is writing this slide's store: not a failure of the slide
                raise
            except Exception as caught:  # noqa: BLE001 - one bad slide never stops the batch: record and go on
                err = output_error(caught, out) if isinstance(caught, OSError) else caught
                outcome.status = "failed"
                outcome.error_class = type(err).__name__
                outcome.error_message = str(err)
                if isinstance(err, SlidescopeError | OSError):
                    log.error("%s: %s: %s", Path(slide).name, type(err).__name__, err)
                else:  # not a known slide problem: keep the traceback in the log
                    log.error("%s: %s: %s", Path(slide).name, type(err).__name__, err, exc_info=True)
            outcome.seconds = round(time.perf_counter() - t0, 4)
            outcome.timings["total"] = outcome.seconds
            outcome.finished = _now()
            data = outcome.to_dict()
            data.update(schema=RECORD_SCHEMA, signature=result_signature(config))
            if outcome.status == "done":
                data.update(file=file_stat(slide), fingerprint=_fingerprint(slide))
            try:
                write_json_atomic(record, data)  # last: from now on the slide counts as finished
            except OSError as err:
                clear = output_error(err, record)
                if clear is err:
                    raise
                raise clear from err
    except SlideClaimedError as err:
        outcome.status = "claimed"
        outcome.error_class, outcome.error_message = type(err).__name__, str(err)
        log.warning("%s: %s", Path(slide).name, err)
    except (SlidescopeError, OSError) as err:  # the claim or the record cannot be written (a full disk...)
        outcome.status = "failed"
        outcome.error_class, outcome.error_message = type(err).__name__, str(err)
        log.error("%s: %s: %s", Path(slide).name, type(err).__name__, err)
    outcome.seconds = round(time.perf_counter() - t0, 4)
    return outcome


def _pipeline(slide: str, cfg: RunConfig, o: SlideOutcome) -> None:
    from ..features.store import store_path
    from ..wsi import open_slide
    from ._embed import embed_slide

    out = cfg.out_dir
    timed = _Timer(o.timings)
    encoder = get_encoder(cfg)
    store = store_path(cfg.stores_dir, slide)

    def on_step(step: str, value: Any) -> None:
        if step == "tissue":  # written before the tiling, which may fail
            o.tissue_mm2 = round(value.area_um2 / 1e6, 4)
            tissue = out / "tissue" / f"{o.key}.geojson"
            with atomic_path(tissue) as tmp:
                tmp.write_text(json.dumps(value.to_geojson()))
            o.outputs["tissue"] = _rel(tissue, out)
        elif step == "grid":
            o.effective_mpp = [round(float(v), 6) for v in value.effective_mpp]
            o.qc = getattr(value, "qc_summary", None)

    with timed("open"):
        # --slide-mpp (or the manifest's slide_mpp) only fills in a missing pixel size; --force-slide-mpp
        # overrides the file's
        fill, fill_source = _fill_in(slide, cfg)
        slide_obj = open_slide(
            slide,
            backend=cfg.backend,
            force_slide_mpp=cfg.force_slide_mpp,
            slide_mpp=fill,
            slide_mpp_source=fill_source,
        )
    with slide_obj:
        o.slide_mpp = [
            round(float(v), 6) for v in slide_obj.mpp
        ]  # MissingMppError: the slide fails, says why
        o.mpp_source = _mpp_source(slide_obj)
        if not o.mpp_source.startswith(MPP_FROM_FILE):
            log.warning("%s: pixel size %s µm/px %s", Path(slide).name, o.slide_mpp[0], o.mpp_source)
        res = embed_slide(
            slide_obj,
            encoder,
            stores=cfg.stores_dir,
            tiling=cfg,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            dtype=cfg.dtype,
            stain=cfg.stain,
            progress=cfg.progress,
            on_step=on_step,
            timer=timed,
            name=Path(slide).name,
        ).result
    o.n_tiles, o.computed_tiles = int(res.n_tiles), int(res.computed)
    o.qc = res.extra.get("qc") or o.qc  # --qc flag: measured during the extraction, summarised after it
    o.tiles_per_s = round(float(res.tiles_per_s), 2)
    o.outputs["store"] = _rel(store, out)
    device = _device(cfg) if (cfg.model or cfg.prompts) else "cpu"
    heat = out / "heatmaps"
    if cfg.model:
        from ..mil.score import score

        with timed("score"):
            (s,) = score(list(cfg.model), [store], write_scores=True, name=cfg.score_name, device=device)
        if s.risk is not None:
            o.predictions["mil_risk"] = round(s.risk, 6)
        elif s.prediction is not None:
            o.predictions["mil_prediction"] = round(s.prediction, 6)
        else:
            o.predictions.update({f"mil_prob_{c}": round(p, 6) for c, p in s.probs.items()})
            o.predictions["mil_predicted"] = s.predicted
        if cfg.heatmaps:
            with timed("heatmaps"):
                _heatmap(
                    slide,
                    store,
                    f"{cfg.score_name}/attention",
                    heat / f"{o.key}.{_safe(cfg.score_name)}",
                    cfg,
                    o,
                    f"heatmap:{cfg.score_name}",
                )
    if cfg.prompts is not None:
        from ..vlm.api import SCORES_PREFIX, load_prompts, zero_shot

        net = _slide_text_model(cfg)
        prompts = load_prompts(cfg.prompts)
        with timed("zero_shot"):
            (row,) = zero_shot(
                [store],
                prompts,
                model=net,
                encoder=cfg.encoder,
                level=cfg.zero_shot_level,  # type: ignore[arg-type]
                ensemble=cfg.prompt_ensemble,
                device=device,
            )  # type: ignore[arg-type]
            if cfg.heatmaps and cfg.zero_shot_level != "tile":  # the tile maps the heatmaps are drawn from
                zero_shot([store], prompts, model=net, encoder=cfg.encoder, level="tile", device=device)
        o.predictions.update({f"zero_shot_prob_{c}": round(p, 6) for c, p in row.probs.items()})
        o.predictions["zero_shot_predicted"] = row.predicted
        if cfg.heatmaps:
            with timed("heatmaps"):
                for c in prompts.names:
                    _heatmap(
                        slide,
                        store,
                        f"{SCORES_PREFIX}/{c}",
                        heat / f"{o.key}.zero-shot-{_safe(c)}",
                        cfg,
                        o,
                        f"heatmap:zero-shot/{c}",
                    )


def _heatmap(
    slide: str, store: Path | str, scores: str, stem: Path, cfg: RunConfig, o: SlideOutcome, name: str
) -> None:
    from ..mil.heatmap import heatmap

    png, geo = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".geojson")
    with atomic_path(png) as tmp_png, atomic_path(geo) as tmp_geo:
        heatmap(
            slide,
            store,
            scores=scores,
            out_png=tmp_png,
            out_geojson=tmp_geo,
            size=cfg.heatmap_size,
            cmap=cfg.cmap,
            normalize=cfg.normalize,
            backend=cfg.backend,
        )  # (the thumbnail needs no mpp)
    o.outputs[name] = _rel(png, cfg.out_dir)
    o.outputs[name + ".geojson"] = _rel(geo, cfg.out_dir)
