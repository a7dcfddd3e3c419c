"""``heatmap()``: per-tile scores painted over a slide thumbnail (PNG) and exported as QuPath GeoJSON.

Scores are normalised to [0, 1] before colouring: ``normalize="rank"`` (default) uses each tile's
rank (``rank / (N - 1)``), so attention that is peaked on a few tiles still spreads over the
colour map; ``"minmax"`` maps the lowest score to 0 and the highest to 1. The GeoJSON keeps the
raw scores (``properties.measurements.score``) and the normalised ones (``score_normalized``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._location import require_local
from ..errors import InvalidParameterError
from ..features.store import open_store, store_path
from ..metrics import rankdata

__all__ = ["heatmap", "colormap", "normalize_scores", "tiles_geojson"]

# a few anchors of matplotlib's maps (no matplotlib dependency): position, RGB
_CMAPS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    "viridis": [
        (68, 1, 84),
        (70, 50, 126),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 193, 109),
        (160, 218, 57),
        (253, 231, 37),
    ],
    "magma": [
        (0, 0, 4),
        (44, 17, 95),
        (114, 31, 129),
        (183, 55, 121),
        (241, 96, 93),
        (254, 159, 109),
        (254, 224, 161),
        (252, 253, 191),
    ],
    "jet": [
        (0, 0, 128),
        (0, 0, 255),
        (0, 128, 255),
        (0, 255, 255),
        (128, 255, 128),
        (255, 255, 0),
        (255, 128, 0),
        (128, 0, 0),
    ],
}


def colormap(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """``values`` in [0, 1] -> ``(..., 3) uint8`` RGB (linear interpolation between anchors)."""
    if cmap not in _CMAPS:
        raise InvalidParameterError(f"unknown colour map {cmap!r}; choose one of {', '.join(sorted(_CMAPS))}")
    anchors = np.asarray(_CMAPS[cmap], dtype=np.float64)
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(anchors) - 1)
    lo = np.floor(v).astype(int).clip(0, len(anchors) - 2)
    t = (v - lo)[..., None]
    return np.round(anchors[lo] * (1 - t) + anchors[lo + 1] * t).astype(np.uint8)


def normalize_scores(scores: np.ndarray, *, normalize: str = "rank") -> np.ndarray:
    """(N,) scores -> (N,) in [0, 1] by ``"rank"`` (ties share their mean rank) or ``"minmax"``."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    if normalize == "minmax":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.full_like(s, 0.5)
    if normalize == "rank":
        if len(s) == 1:
            return np.array([0.5])
        # 0-based average ranks (ties share their mean rank), O(N log N)
        return (rankdata(s) - 1) / (len(s) - 1)
    raise InvalidParameterError(f"normalize must be 'rank' or 'minmax', got {normalize!r}")


def tiles_geojson(
    coords: np.ndarray,
    extent: tuple[int, int],
    scores: np.ndarray,
    *,
    normalized: np.ndarray | None = None,
    object_type: str = "tile",
    name: str = "score",
) -> dict:
    """QuPath GeoJSON FeatureCollection: one Polygon per tile in level-0 px (top-left origin)."""
    w, h = int(extent[0]), int(extent[1])
    feats = []
    for i, ((x, y), s) in enumerate(
        zip(np.asarray(coords).tolist(), np.asarray(scores).tolist(), strict=True)
    ):
        meas = {name: float(s)}
        if normalized is not None:
            meas[f"{name}_normalized"] = float(normalized[i])
        feats.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]],
                },
                "properties": {"objectType": object_type, "name": f"tile {i}", "measurements": meas},
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def heatmap(
    slide_path: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    scores: str,
    out_png: str | os.PathLike[str],
    out_geojson: str | os.PathLike[str] | None = None,
    size: int = 1024,
    cmap: str = "inferno",
    alpha: float = 0.5,
    normalize: str = "rank",
    column: int | None = None,
    backend: str = "auto",
    slide_mpp: float | None = None,
) -> Path:
    """Paint a slide's per-tile scores over its thumbnail, with a colour bar; optionally export QuPath GeoJSON.

    Parameters
    ----------
    slide_path : str or os.PathLike
        The slide file.
    store : str or os.PathLike
        The slide's store (``<slide>.zarr``) or the folder of stores.
    scores : str
        Name of the scores in the store, e.g. ``"<run>/attention"`` (written by :func:`score`) or
        ``"zero-shot/<class>"`` (written by ``zero_shot(..., level="tile")``).
    out_png : str or os.PathLike
        The image to write: the thumbnail fits in ``size`` x ``size`` px, plus a colour bar.
    out_geojson : str or os.PathLike, optional
        QuPath GeoJSON of the scored tiles: one polygon per tile in level-0 px, raw and normalised scores.
    size : int, default 1024
        Longest side of the thumbnail in px.
    cmap : {"inferno", "viridis", "magma", "jet"}
    alpha : float, default 0.5
        Opacity of the tiles over the thumbnail.
    normalize : {"rank", "minmax"}
        How scores map to colours (see the module docstring): ``rank`` spreads peaked attention over the
        colour map, ``minmax`` is linear.
    column : int, optional
        Which column of (N, K) scores to draw (required for 2-D scores).
    backend : str, default "auto"
    slide_mpp : float, optional
        Level-0 µm/px for a slide whose metadata lacks it (``slide_mpp`` of
        :func:`~slidescope.wsi.open_slide`).

    Returns
    -------
    pathlib.Path
        The PNG.

    Raises
    ------
    StoreError
        No scores of that name in the store; :class:`~slidescope.features.store.SlideMismatchError` when the
        store was made from another slide file (or the slide changed since), checked by fingerprint for a
        local slide; :class:`~slidescope.features.store.StoreCorruptError` for a damaged store.
    InvalidParameterError
        2-D scores without ``column``, or an unknown colour map or normalisation.

    Examples
    --------
    >>> import tempfile
    >>> import slidescope as ss
    >>> from slidescope.features import SlideStore
    >>> path, out = "sample_data/sample_slide.tiff", tempfile.mkdtemp()
    >>> grid = ss.make_tile_grid(ss.open_slide(path), tile_size=224, mpp=0.5)
    >>> res = ss.extract_features(path, grid, "he-descriptor", store=out, num_workers=0, progress=False)
    >>> store = SlideStore.open(res.store, mode="r+")
    >>> store.write_scores("demo/tissue", store.tissue_fraction)      # any (N,) per-tile scores
    >>> ss.heatmap(path, res.store, scores="demo/tissue", out_png=f"{out}/tissue.png",
    ...            out_geojson=f"{out}/tissue.geojson").name
    'tissue.png'
    """
    from PIL import Image, ImageDraw

    from ..wsi import open_slide

    from ..features.store import as_location, location_name

    out_png = require_local(out_png, "out_png (the heatmap PNG)")  # results stay local; stores may be URLs
    out_geojson = None if out_geojson is None else require_local(out_geojson, "out_geojson")
    sp = as_location(store)  # a folder, a store, or their fsspec URLs
    if not location_name(sp).endswith(".zarr"):
        sp = store_path(sp, slide_path)
    st = open_store(sp, scores=scores)
    st.check_slide(slide_path)  # never paint another slide's (or an outdated) store onto this slide
    values = np.asarray(st.scores(scores), dtype=np.float64)
    if values.ndim == 2:
        if column is None:
            raise InvalidParameterError(
                f"scores {scores!r} have {values.shape[1]} columns; choose one with column="
            )
        values = values[:, column]
    coords = st.coords
    tw, th = st.tile_extent
    norm = normalize_scores(values, normalize=normalize)
    with open_slide(slide_path, backend=backend, slide_mpp=slide_mpp) as slide:
        w0, h0 = slide.dimensions
        thumb = slide.get_thumbnail((size, size))
    sx, sy = thumb.shape[1] / w0, thumb.shape[0] / h0
    base = Image.fromarray(thumb).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    colours = colormap(norm, cmap)
    a = int(round(255 * float(np.clip(alpha, 0, 1))))
    for (x, y), c in zip(coords.tolist(), colours.tolist(), strict=True):
        box = (
            int(round(x * sx)),
            int(round(y * sy)),
            int(round((x + tw) * sx)) - 1,
            int(round((y + th) * sy)) - 1,
        )
        draw.rectangle(box, fill=(*c, a))
    painted = Image.alpha_composite(base, overlay).convert("RGB")
    # colour bar on the right: high at the top
    bar_w, pad, label_w = max(12, painted.height // 25), 10, 60
    canvas = Image.new(
        "RGB", (painted.width + pad + bar_w + label_w, max(painted.height, 80)), (255, 255, 255)
    )
    canvas.paste(painted, (0, 0))
    bar_h = canvas.height - 2 * pad
    ramp = colormap(np.linspace(1, 0, bar_h), cmap)
    bar = np.repeat(ramp[:, None, :], bar_w, axis=1)
    bx = painted.width + pad
    canvas.paste(Image.fromarray(bar), (bx, pad))
    d = ImageDraw.Draw(canvas)
    d.rectangle((bx - 1, pad - 1, bx + bar_w, pad + bar_h), outline=(0, 0, 0))
    hi, lo = ("1", "0") if normalize == "minmax" else ("top", "bottom")
    d.text((bx + bar_w + 4, pad), f"{hi}", fill=(0, 0, 0))
    d.text((bx + bar_w + 4, pad + bar_h - 12), f"{lo}", fill=(0, 0, 0))
    d.text((bx + bar_w + 4, pad + bar_h // 2 - 6), normalize, fill=(0, 0, 0))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    if out_geojson is not None:
        gj = tiles_geojson(coords, (tw, th), values, normalized=norm)
        Path(out_geojson).parent.mkdir(parents=True, exist_ok=True)
        Path(out_geojson).write_text(json.dumps(gj))
    return out_png
