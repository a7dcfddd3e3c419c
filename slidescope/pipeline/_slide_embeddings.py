"""``run(..., slide_encoder=NAME)``: after the slides, the slide embedding of every finished slide, from its
store, written into the store (``slide_embeddings/<name>``) and into ``OUT/slide_embeddings.csv``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidParameterError, SlidescopeError
from ._config import RunConfig
from ._slide import SlideOutcome, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..features.slide_encoders import SlideEncoder

log = logging.getLogger(__name__)

__all__ = ["check_slide_encoder", "write_slide_embeddings", "SLIDE_EMBEDDINGS_CSV"]

SLIDE_EMBEDDINGS_CSV = "slide_embeddings.csv"


def check_slide_encoder(cfg: RunConfig) -> None:
    """Refuse, before any slide, a slide encoder that cannot read this run's tile embeddings (another patch
    encoder or tiling): the message says which ``--encoder`` / ``--tile-size`` / ``--mpp`` it needs; and one
    built by its publisher's code (PRISM, TITAN) without ``trust_remote_code``."""
    if cfg.slide_encoder is None:
        return
    from ..features.encoders import get_encoder_config
    from ..features.slide_encoders import MPP_TOLERANCE, get_slide_encoder_config

    sc = get_slide_encoder_config(cfg.slide_encoder)
    if sc.requires_remote_code and not cfg.trust_remote_code:
        from ..vlm.published import RemoteCodeError

        raise RemoteCodeError(
            f"slide encoder {sc.name!r} is built by its publisher's code (downloaded with its weights): review "
            "that code, then run with --trust-remote-code (key trust-remote-code)"
        )
    if sc.patch_encoders and cfg.encoder not in sc.patch_encoders:
        raise InvalidParameterError(
            f"slide encoder {sc.name!r} was trained on {' or '.join(sc.patch_encoders)} tile embeddings, not "
            f"{cfg.encoder!r}: run with --encoder {sc.patch_encoders[0]}, or another --slide-encoder (mean: any)"
        )
    enc = get_encoder_config(cfg.encoder)
    size = cfg.tile_size if cfg.tile_size is not None else enc.tile_size
    mpp = cfg.mpp if cfg.mpp is not None else enc.mpp
    if sc.tile_size is not None and sc.mpp is not None:
        if size != sc.tile_size or mpp is None or abs(float(mpp) - sc.mpp) > MPP_TOLERANCE:
            raise InvalidParameterError(
                f"slide encoder {sc.name!r} was trained on {sc.geometry()} tiles; this run tiles {size} px at "
                f"{mpp} µm/px: run with --tile-size {sc.tile_size} --mpp {sc.mpp:g}"
            )


def write_slide_embeddings(
    model: SlideEncoder, cfg: RunConfig, outcomes: Sequence[SlideOutcome]
) -> Path | None:
    """The slide embedding of each finished slide (done now or before), into its store and one CSV row
    (``slide``, ``d0``...). Each outcome's ``outputs["slide_embedding"]`` says where, or why not (a slide
    whose store cannot be embedded is logged and the others go on). Returns the CSV (None: no row)."""
    import numpy as np

    from ..features.slide_encoders import embed_slides
    from ..features.store import store_path

    names: list[str] = []
    rows: list[np.ndarray] = []
    stored = ""
    for o in outcomes:
        if not o.ok:
            continue
        try:
            res = embed_slides([store_path(cfg.stores_dir, o.slide)], model, encoder=cfg.encoder, write=True)
        except SlidescopeError as err:
            log.warning("%s: no slide embedding: %s", o.key, err)
            o.outputs["slide_embedding"] = f"not written: {type(err).__name__}: {err}"
            continue
        stored = res.name
        names.append(o.key)
        rows.append(res.embeddings[0])
        o.outputs["slide_embedding"] = f"{SLIDE_EMBEDDINGS_CSV} (store: slide_embeddings/{res.name})"
    if not rows:
        return None
    path = cfg.out_dir / SLIDE_EMBEDDINGS_CSV
    header = "slide," + ",".join(f"d{i}" for i in range(len(rows[0])))
    lines = [
        f"{n}," + ",".join(np.format_float_positional(v, 7) for v in r)
        for n, r in zip(names, rows, strict=True)
    ]
    write_text_atomic(path, "\n".join([header, *lines]) + "\n")
    log.info("%d slide embeddings (%s) in %s", len(rows), stored, path)
    return path
