"""Coarse-to-fine tissue detection: ``method="fast"`` of :func:`~slidescope.wsi.detect_tissue`.

The full detector (:func:`._segment.segment`) analyses every pixel of the mask; most of them are deep
inside the tissue or out on the glass, where a 4x coarser look gives the same answer. So:

1. The slide is read at ``COARSE_FACTOR`` x the mask's pixel size (32 µm/px for the default 8 µm/px mask),
   from the coarsest pyramid level at least that fine (usually a level of its own: no finer level is
   resampled), on a grid whose pixels are exactly ``COARSE_FACTOR`` x ``COARSE_FACTOR`` mask pixels.
2. The full detector's steps run there (:func:`._segment.analyse`, :func:`._segment.hysteresis`, hole
   filling and smallest pieces; no closing, whose ~10 µm disk is finer than one coarse pixel): the glass
   colour, the threshold, the IHC test and the pen decision all come from this image.
3. The *band*: the coarse pixels where the coarse answer may not hold for every mask pixel under them:
   those with tissue and non-tissue in their 3 x 3 neighbourhood (every edge, pen strokes' included),
   the faint ones (score below :data:`DENSE` x the threshold: glass and tissue averaged, or pale tissue,
   and outside the tissue above :data:`FAINT` x the weak threshold: fragments), and with pen removal on,
   the dark ones (:data:`DARK`: dense keratin whose darkest pixels pass for black ink). Only the mask
   pixels under the band are read at the mask's resolution (in blocks of 256 mask pixels: file tiles are
   decoded once) and scored with the coarse threshold; everywhere else a mask pixel takes its coarse
   pixel's answer. The hysteresis then links the band's faint pixels to clear tissue (the band's pixels
   above the threshold, and the coarse tissue off the band) and drops the pieces under ``min_area_um2``
   that do not join the coarse tissue.
4. The closing (~10 µm), holes and the ink margin are then done on the whole mask, as in the full
   detector (and around the ink, the pieces its removal cut under ``min_area_um2`` are dropped).

What differs from the full detector, by construction: the glass colour, Otsu's threshold and the IHC test
come from the coarse image (the same populations, glass and tissue, averaged over 16 x the area); pen
inside the coarse tissue off the band is not looked for; the smallest pieces are measured before the
closing. ``tests/wsi/test_tissue_speed_quality.py`` bounds the difference: IoU >= 0.98 with the full
detector on the synthetic and real test slides (measured 0.985-1.0; 0.979 on CMU-1 at 4 µm/px).
"""

from __future__ import annotations

import math

import numpy as np

from ._downsample import read_downsampled
from ._pen import pen_mask
from ._prefetch import default_read_threads
from ._segment import (
    MORPH_RADIUS_UM,
    analyse,
    chroma,
    clean,
    dilate_square,
    hysteresis,
    info_of,
    label,
    optical_density,
)
from ._slide import Slide

__all__ = ["COARSE_FACTOR", "MIN_COARSE_SIDE", "read_coarse", "segment_coarse_to_fine"]

#: Mask pixels per coarse pixel, per side (the coarse image has 1/16 of the mask's pixels).
COARSE_FACTOR = 4
#: Below this many coarse pixels on the short side the full detector is used (it is fast there anyway).
MIN_COARSE_SIDE = 16
#: Side, in mask pixels, of the blocks read at the mask's resolution under the band.
FINE_BLOCK = 256


#: Coarse tissue pixels scoring below this x the threshold may be glass and tissue averaged: into the band.
DENSE = 1.0
#: Coarse pixels scoring above this x the weak threshold (and below DENSE x the threshold) may hide tissue
#: fragments: into the band too.
FAINT = 0.5
#: With pen removal on, coarse tissue pixels whose brightest channel is below this may hide pixels dark
#: enough to be taken for black ink at the mask's resolution (dense keratin): into the band.
DARK = 120


def _hysteresis_in_band(
    certain: np.ndarray, band: np.ndarray, weak: np.ndarray, strong: np.ndarray, k: int, min_px: float
) -> np.ndarray:
    """Which of the band's faint pixels are tissue: those 8-connected (through faint pixels) to clear tissue,
    in pieces of at least ``min_px`` pixels unless they join the coarse tissue off the band.

    ``certain``: coarse tissue off the band (coarse grid); ``weak`` / ``strong``: the band's pixels above
    the weak threshold / the threshold, (n, k, k) in the order of ``np.nonzero(band)``. Only the band and
    the coarse tissue next to it are set in the labelled image (the rest is decided).
    Returns the band's tissue, (n, k, k) bool."""
    ring = certain & dilate_square(band)  # coarse tissue touching the band: clear tissue, joins big pieces
    bi, bj = np.nonzero(band)
    ri, rj = np.nonzero(ring)
    # only the bounding box of the band and the ring is labelled: nothing else is set
    top, left = min(bi.min(), ri.min(initial=bi.min())), min(bj.min(), rj.min(initial=bj.min()))
    ch = max(bi.max(), ri.max(initial=bi.max())) + 1 - top
    cw = max(bj.max(), rj.max(initial=bj.max())) + 1 - left
    bi, bj, ri, rj = bi - top, bj - left, ri - top, rj - left
    region = np.zeros((ch * k, cw * k), bool)
    view = region.reshape(ch, k, cw, k)
    view[bi, :, bj] = weak
    view[ri, :, rj] = True
    labels, n = label(region, connectivity=8)
    lview = labels.reshape(ch, k, cw, k)
    band_labels, ring_labels = lview[bi, :, bj], lview[ri, :, rj]
    keep = np.zeros(n + 1, bool)
    keep[band_labels[strong]] = True
    if min_px > 0:
        sizes = np.bincount(band_labels.ravel(), minlength=n + 1)
        joined = np.zeros(n + 1, bool)
        joined[ring_labels.ravel()] = True
        keep &= joined | (sizes >= min_px)
    keep[ring_labels.ravel()] = True
    keep[0] = False
    return keep[band_labels]


def _drop_small_near(tissue: np.ndarray, pen: np.ndarray, min_px: float) -> None:
    """Drop, in place, the pieces under ``min_px`` pixels around the ink: removing the ink is the one step
    after the hysteresis (where pieces are measured) that can cut pieces off. Only the ink's bounding box,
    grown by a piece's side, is labelled; pieces reaching the box's edge are kept (they may go on past it)."""
    h, w = tissue.shape
    rows, cols = np.flatnonzero(pen.any(axis=1)), np.flatnonzero(pen.any(axis=0))
    margin = int(math.ceil(math.sqrt(min_px))) + 2
    r0, r1 = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)
    c0, c1 = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)
    labels, n = label(tissue[r0:r1, c0:c1], connectivity=8)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_px
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        keep[edge] = True
    keep[0] = False
    tissue[r0:r1, c0:c1] = keep[labels]


def _upsample(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def _band(tissue: np.ndarray) -> np.ndarray:
    """Coarse pixels with tissue and non-tissue in their 3 x 3 neighbourhood (the edge pixels of both)."""
    grown = dilate_square(tissue)
    shrunk = ~dilate_square(~tissue)  # outside the image counts as tissue: no edge at the border
    return grown & ~shrunk


def _read_fine(
    slide: Slide, level: int, size: tuple[int, int], band: np.ndarray, k: int, glass
) -> np.ndarray:
    """The mask-resolution image under the band's blocks, on the coarse grid's padded extent (h, w, 3).

    Blocks without band pixels are left as the glass colour (they are never looked at). Where the direct
    TIFF reader serves the level, the blocks are read in threads (:func:`._prefetch.default_read_threads`:
    its JPEG decoder and the box filter release the GIL; each block is its own part of ``fine``)."""
    mw, mh = size
    ch, cw = band.shape
    fine = np.empty((ch * k, cw * k, 3), np.uint8)  # blocks off the band are never looked at
    fine[mh:] = fine[:, mw:] = np.asarray(np.round(glass), np.uint8)  # the padding past the slide
    step = FINE_BLOCK // k  # coarse pixels per block side
    windows = []
    for br in range(0, ch, step):
        for bc in range(0, cw, step):
            if not band[br : br + step, bc : bc + step].any():
                continue
            r0, c0 = br * k, bc * k
            r1, c1 = min(mh, r0 + FINE_BLOCK), min(mw, c0 + FINE_BLOCK)
            if r1 > r0 and c1 > c0:
                windows.append((c0, r0, c1, r1))

    def read(window: tuple[int, int, int, int]) -> None:
        c0, r0, c1, r1 = window
        fine[r0:r1, c0:c1] = read_downsampled(slide, level, size, window=window)

    source = slide.tile_source()
    threads = default_read_threads() if source is not None and source.has_level(level) else 1
    if threads > 1 and len(windows) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(windows)), thread_name_prefix="slidescope-tissue") as pool:
            list(pool.map(read, windows))  # list(): re-raises the first error
    else:
        for window in windows:
            read(window)
    return fine


def read_coarse(
    slide: Slide, size: tuple[int, int], mpp: float, level: int
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """The coarse image of step 1, the level it was read from, and the mask-resolution image when it was read.

    The coarse image is ``COARSE_FACTOR`` x ``mpp`` µm/px on a grid whose pixels are exactly ``COARSE_FACTOR`` x
    ``COARSE_FACTOR`` pixels of the mask grid ``size``, so it may reach past the slide (white there) by less
    than one coarse pixel at the right and bottom. It is read from the coarsest level at least that fine. When
    that is the mask's own level ``level`` (a single-level file, or a pyramid without a level between 8 and
    32 µm/px), reading it and then the band would read that level twice: the mask-resolution image is read
    whole instead, once (what ``method="full"`` reads), the coarse image is the rounded means of its blocks, and the
    band is cut from it. (Against a direct read, whose Pillow box filter weights pixels unevenly at non-integer
    ratios: mean 0.12-0.16, at most 2-7 grey levels apart on CMU-1-Small-Region at 8-2 µm/px.) Returns (coarse RGB,
    coarse level, the mask-resolution image padded to the coarse grid (white) or None)."""
    k = COARSE_FACTOR
    mw, mh = size
    w0, h0 = slide.dimensions
    cw, ch = math.ceil(mw / k), math.ceil(mh / k)
    coarse_level = slide.best_level_for_mpp(mpp * k)
    if coarse_level != level:
        extent = (cw * k * w0 / mw, ch * k * h0 / mh)
        return read_downsampled(slide, coarse_level, (cw, ch), extent=extent), coarse_level, None
    fine = np.full((ch * k, cw * k, 3), 255, np.uint8)
    fine[:mh, :mw] = read_downsampled(slide, level, size)
    sums = fine.reshape(ch, k, cw, k, 3).sum(axis=(1, 3), dtype=np.uint32)
    coarse = ((sums + (k * k) // 2) // (k * k)).astype(np.uint8)  # the rounded mean of each k x k block
    return coarse, coarse_level, fine


def segment_coarse_to_fine(
    slide: Slide,
    *,
    level: int,
    size: tuple[int, int],
    mpp: float,
    min_area_um2: float,
    pen_mode: str,
    fill_holes: bool,
    threshold: float | None,
    coarse_image: tuple[np.ndarray, int, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, dict]:
    """The tissue mask of ``slide`` on the grid ``size`` = (mw, mh) at ``mpp`` µm/px, coarse to fine.

    ``level`` is the pyramid level the mask resolution is read from; ``coarse_image``: what :func:`read_coarse`
    gave for the same slide, size, mpp and level (read here when None). Returns (bool mask (mh, mw), info);
    info has the full detector's keys (from the coarse image) and ``coarse_level``, ``coarse_mpp``,
    ``band_fraction`` (share of the mask analysed at its own resolution).
    """
    k = COARSE_FACTOR
    mw, mh = size
    cw, ch = math.ceil(mw / k), math.ceil(mh / k)
    coarse_mpp = mpp * k
    rgb, coarse_level, whole = read_coarse(slide, size, mpp, level) if coarse_image is None else coarse_image
    a = analyse(rgb, pen_mode=pen_mode, threshold=threshold, glass_samples=65_536)
    coarse = hysteresis(a.score, a.pen, a.t, a.t_low)
    coarse = clean(coarse, a.pen, mpp=coarse_mpp, min_area_um2=min_area_um2, fill=fill_holes, closing=False)

    band = _band(coarse) | ((a.score < DENSE * a.t) & (coarse | (a.score > FAINT * a.t_low)))
    if a.pen_used == "on":
        # the brightest channel, by np.maximum: 20x the speed of rgb.max(axis=2)
        brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
        band |= coarse & (brightest < DARK)
    bi, bj = np.nonzero(band)
    tissue = _upsample(coarse, k)
    pen = np.zeros_like(tissue)
    if len(bi):
        if whole is None:
            fine = _read_fine(slide, level, size, band, k, a.glass)
        else:  # the mask-resolution image was read whole: its padding past the slide as in _read_fine
            fine = whole
            fine[mh:] = fine[:, mw:] = np.asarray(np.round(a.glass), np.uint8)
        # the band's mask pixels, (n, k, k, 3): advanced indices on the (ch, k, cw, k, 3) view
        pix = fine.reshape(ch, k, cw, k, 3)[bi, :, bj]
        od = optical_density(pix, a.glass)
        score = chroma(od)
        ink = pen_mask(pix, od, a.glass, margin=False) if a.pen_used == "on" else np.zeros(score.shape, bool)
        weak, strong = (score > a.t_low) & ~ink, (score > a.t) & ~ink
        min_px = min_area_um2 / (mpp * mpp)
        found = _hysteresis_in_band(coarse & ~band, band, weak, strong, k, min_px)
        tissue.reshape(ch, k, cw, k)[bi, :, bj] = found
        pen.reshape(ch, k, cw, k)[bi, :, bj] = ink
    if pen.any():
        pen = dilate_square(pen)  # the ink's one-pixel margin
    radius = max(1, int(round(MORPH_RADIUS_UM / mpp)))
    tissue = clean(tissue, pen, mpp=mpp, min_area_um2=0.0, fill=fill_holes)
    if pen.any() and min_area_um2 > 0:
        _drop_small_near(tissue, pen, min_area_um2 / (mpp * mpp))
    info = info_of(a, radius=radius)
    info.update(
        {
            "coarse_level": int(coarse_level),
            "coarse_mpp": round(float(coarse_mpp), 6),
            "band_fraction": round(float(band.mean()), 5),
        }
    )
    return np.ascontiguousarray(tissue[:mh, :mw]), info
