"""``make_artefact_slide``: a synthetic H&E slide with artefacts injected at known, tile-aligned places.

The ground truth for the classic tile QC (:mod:`slidescope.wsi` ``qc_tiles``): the slide is drawn as by
:func:`~slidescope.synthetic.make_synthetic_slide` (same layout and renderer), cut into cells of ``cell``
level-0 pixels, and whole cells that lie on tissue get one artefact each:

* ``blur``: a Gaussian blur of ``blur_sigma`` level-0 pixels (out-of-focus scanning);
* ``pen``: a marker stroke (blue, green or black ink, 10-16 px wide) across the cell, Beer-Lambert over
  the tissue;
* ``fold``: tissue folded over itself: the optical density doubled (x 2.2) over the whole cell, so it is
  darker and more saturated;
* ``bubble``: an air bubble: a disc over most of the cell where the tissue is washed out (density x 0.2),
  edged by a bright rim (near-white, brighter than the glass) 4 px wide.

One level (no pyramid), tiled JPEG, the pixel size in the TIFF resolution tags (OpenSlide's generic TIFF
reader and tiffslide open it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from ..errors import InvalidParameterError
from ._checks import check_int, check_positive_float
from ._layout import make_layout
from ._render import Renderer

__all__ = ["ARTEFACT_KINDS", "ArtefactSlide", "make_artefact_slide"]

#: the artefacts :func:`make_artefact_slide` injects
ARTEFACT_KINDS = ("blur", "pen", "fold", "bubble")
_GLASS = 242.0
#: unit transmission of the inks (R, G, B) where the stroke is solid
_INKS = {"blue": (0.18, 0.40, 0.80), "green": (0.20, 0.70, 0.45), "black": (0.12, 0.12, 0.14)}


@dataclass(frozen=True)
class ArtefactSlide:
    """What :func:`make_artefact_slide` wrote: the slide and where each artefact is.

    ``regions[kind]`` lists the level-0 ``(x, y)`` top-left corners of the ``cell`` x ``cell`` cells that
    hold an artefact of that kind; ``tissue_mask`` is the layout's tissue at ``mask_mpp``."""

    path: Path
    width: int
    height: int
    mpp: float
    cell: int
    regions: dict[str, list[tuple[int, int]]]
    blur_sigma: float
    tissue_mask: np.ndarray
    mask_mpp: float

    def labels(self, coords: np.ndarray, kind: str | None = None) -> np.ndarray:
        """Boolean (N,): the tiles at level-0 ``coords`` (top-left, tiles of ``cell`` px) that are an
        injected cell of ``kind`` (None: of any kind)."""
        kinds = ARTEFACT_KINDS if kind is None else (kind,)
        cells = {xy for k in kinds for xy in self.regions[k]}
        return np.array([(int(x), int(y)) in cells for x, y in np.asarray(coords)], bool)


def make_artefact_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 3584,
    height: int = 2688,
    mpp: float = 0.5,
    cell: int = 224,
    per_kind: int = 6,
    blur_sigma: float = 3.0,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> ArtefactSlide:
    """Write a synthetic H&E slide with ``per_kind`` cells of each artefact of :data:`ARTEFACT_KINDS`.

    Parameters
    ----------
    path : output ``.tiff``; parent folders are created.
    width, height : level-0 size in pixels (at least 4 cells each way).
    mpp : µm per level-0 pixel.
    cell : side of the cells in level-0 pixels; a grid of ``cell`` px tiles at ``mpp`` lines up with them.
    per_kind : cells per artefact kind; the cells are drawn at random among those wholly on tissue.
    blur_sigma : the Gaussian blur's sigma in level-0 pixels.
    seed : random seed; the same seed and arguments give the same pixels.
    jpeg_quality : JPEG quality of the tiles.

    Returns
    -------
    ArtefactSlide

    Raises
    ------
    InvalidParameterError
        A bad size, or too few tissue cells for ``per_kind`` artefacts of every kind.
    """
    cell = check_int("cell", cell, 16)
    width = check_int("width", width, 4 * cell)
    height = check_int("height", height, 4 * cell)
    mpp = check_positive_float("mpp", mpp)
    per_kind = check_int("per_kind", per_kind, 1)
    blur_sigma = check_positive_float("blur_sigma", blur_sigma)
    seed = check_int("seed", seed, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xA27E])
    mask_mpp = 16.0 * mpp
    layout = make_layout(rng, width, height, mpp, mask_mpp, 3, True)
    rgb = Renderer(layout, seed=seed, mpp=mpp, background=(242, 242, 242)).render(0, 0, height, width)
    tissue = layout.tissue > 0
    cells = _tissue_cells(tissue, width, height, cell, mask_mpp / mpp)
    need = per_kind * len(ARTEFACT_KINDS)
    if len(cells) < need:
        raise InvalidParameterError(
            f"only {len(cells)} cells of {cell} px lie wholly on tissue, {need} are needed: make the slide "
            f"larger, the cells smaller or per_kind lower."
        )
    chosen = [cells[i] for i in rng.permutation(len(cells))[:need]]
    regions: dict[str, list[tuple[int, int]]] = {k: [] for k in ARTEFACT_KINDS}
    for i, (x, y) in enumerate(chosen):
        kind = ARTEFACT_KINDS[i % len(ARTEFACT_KINDS)]
        regions[kind].append((x, y))
        _inject(rgb, kind, x, y, cell, blur_sigma, rng)
    res = 1e4 / mpp
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": jpeg_quality},
        resolution=(res, res),
        resolutionunit="CENTIMETER",
    )
    return ArtefactSlide(path, width, height, mpp, cell, regions, blur_sigma, tissue, mask_mpp)


def _tissue_cells(tissue: np.ndarray, width: int, height: int, cell: int, f: float) -> list[tuple[int, int]]:
    """Top-left corners of the whole cells whose every mask pixel is tissue."""
    out = []
    for y in range(0, height - cell + 1, cell):
        for x in range(0, width - cell + 1, cell):
            r0, r1 = int(y / f), int(math.ceil((y + cell) / f))
            c0, c1 = int(x / f), int(math.ceil((x + cell) / f))
            if tissue[r0:r1, c0:c1].all():
                out.append((x, y))
    return out


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / _GLASS)


def _from_od(od: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(_GLASS * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def _inject(
    rgb: np.ndarray, kind: str, x: int, y: int, cell: int, sigma: float, rng: np.random.Generator
) -> None:
    """Put one artefact of ``kind`` into the cell at level-0 (x, y), in place."""
    h, w = rgb.shape[:2]
    view = rgb[y : y + cell, x : x + cell]
    yy, xx = np.mgrid[0:cell, 0:cell].astype(np.float32)
    if kind == "blur":  # blurred with its surroundings, so the cell's border is blurred too
        m = int(math.ceil(4 * sigma))
        y0, y1, x0, x1 = max(0, y - m), min(h, y + cell + m), max(0, x - m), min(w, x + cell + m)
        region = ndimage.gaussian_filter(rgb[y0:y1, x0:x1].astype(np.float32), (sigma, sigma, 0))
        view[:] = np.clip(np.rint(region[y - y0 : y - y0 + cell, x - x0 : x - x0 + cell]), 0, 255)
    elif kind == "fold":
        view[:] = _from_od(_od(view) * 2.2)
    elif kind == "bubble":
        r = 0.42 * cell
        d = np.hypot(yy - cell / 2 + 0.5, xx - cell / 2 + 0.5)
        od = _od(view)
        inside = d < r
        od[inside] *= 0.2
        out = _from_od(od)
        out[(d >= r) & (d < r + 4)] = 254
        view[:] = out
    elif kind == "pen":
        ink = np.asarray(_INKS[str(rng.choice(list(_INKS)))], np.float32)
        half = float(rng.uniform(5, 8))
        phase, amp = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.1, 0.25) * cell)
        centre = cell / 2 + amp * np.sin(2 * math.pi * xx / cell + phase)
        stroke = np.clip(half + 1 - np.abs(yy - centre), 0, 1)[..., None]
        view[:] = np.clip(np.rint(view * (1 - stroke + stroke * ink)), 0, 255).astype(np.uint8)
    else:
        raise InvalidParameterError(f"unknown artefact {kind!r}; one of {', '.join(ARTEFACT_KINDS)}")
