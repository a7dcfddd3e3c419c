"""``make_synthetic_slide``: a synthetic H&E-like pyramidal slide with its exact ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from ._checks import check_int, check_positive_float, check_rgb
from ._layout import make_layout
from ._pyramid import PyramidSpec, level_dims, write_pyramid
from ._render import Renderer

_MAX_DEFAULT_MASK_PIXELS = 8_000_000  # default mask_mpp doubles from 16 * mpp until the mask is this small


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`make_synthetic_slide` wrote, with its ground truth.

    ``tumour_mask`` and ``tissue_mask`` are boolean ``(rows, cols)`` arrays at ``mask_mpp``; mask pixel
    ``(i, j)`` covers level-0 pixels ``[i * f, (i + 1) * f) x [j * f, (j + 1) * f)`` with
    ``f = mask_mpp / mpp`` (the last row/column may reach past the slide edge).
    """

    path: Path
    width: int
    height: int
    mpp: float
    tumour_mask: np.ndarray
    tissue_mask: np.ndarray
    mask_mpp: float
    has_tumour: bool

    @property
    def mask_downsample(self) -> float:
        """Level-0 pixels per mask pixel (``mask_mpp / mpp``)."""
        return self.mask_mpp / self.mpp


def make_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 8192,
    height: int = 6144,
    mpp: float = 0.5,
    tumour: bool = True,
    n_islands: int = 3,
    tile_size: int = 256,
    n_levels: int | None = None,
    jpeg_quality: int = 85,
    seed: int = 0,
    background: tuple[int, int, int] = (242, 242, 242),
    mask_mpp: float | None = None,
) -> SyntheticSlide:
    """Write a synthetic H&E-like pyramidal slide (Aperio SVS-style TIFF) and return its ground truth.

    Parameters
    ----------
    path : output file (``.svs`` or ``.tiff``; the format is the same). Parent folders are created.
    width, height : level-0 size in pixels.
    mpp : microns per pixel at level 0 (0.5 is a typical 20x scan, 0.25 a 40x one).
    tumour : draw one to three tumour regions (8-16 % of the tissue area).
    n_islands : number of tissue islands (0 gives empty glass; then ``tumour`` must be False).
    tile_size : TIFF tile side in pixels (multiple of 16).
    n_levels : pyramid levels, each 4x smaller than the one before; ``None`` adds levels while the
        smallest side of the last one is above 1000 px.
    jpeg_quality : JPEG quality (1-100) of the tiles.
    seed : random seed (>= 0); the same seed and arguments give the same file.
    background : RGB of the empty glass.
    mask_mpp : microns per pixel of the returned masks and of the layout the slide is drawn from;
        default ``16 * mpp`` (a 40,000 x 30,000 slide gives 2500 x 1875 masks), doubled for slides so
        large that the masks would exceed 8 Mpx. Must be >= ``mpp``.

    Returns
    -------
    A :class:`SyntheticSlide` with the path, size, mpp and the tissue/tumour masks.

    Raises
    ------
    InvalidParameterError
        A size, mpp, quality, seed, colour or level count that cannot work.
    """
    width = check_int("width", width, 1)
    height = check_int("height", height, 1)
    mpp = check_positive_float("mpp", mpp)
    n_islands = check_int("n_islands", n_islands, 0)
    tile_size = check_int("tile_size", tile_size, 16)
    if tile_size % 16:
        raise InvalidParameterError(
            f"tile_size must be a multiple of 16 (JPEG 4:2:0 blocks), got {tile_size}; 256 or 512 are usual."
        )
    if n_levels is not None:
        n_levels = check_int("n_levels", n_levels, 1)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 100)
    seed = check_int("seed", seed, 0)
    bg = check_rgb("background", background)
    mask_mpp = _mask_mpp(mask_mpp, width, height, mpp)
    if tumour and n_islands == 0:
        raise InvalidParameterError(
            "tumour=True needs tissue: use n_islands >= 1, or tumour=False for empty glass."
        )
    dims = level_dims(width, height, n_levels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0x5CE9E])
    layout = make_layout(rng, width, height, mpp, mask_mpp, n_islands, bool(tumour))
    tissue_mask = layout.tissue > 0
    tumour_mask = tissue_mask & (layout.tumour > 0)
    has_tumour = bool(tumour_mask.any())
    renderer = Renderer(layout, seed=seed, mpp=mpp, background=bg)
    spec = PyramidSpec(
        dims=dims,
        tile=tile_size,
        quality=jpeg_quality,
        mpp=mpp,
        seed=seed,
        has_tumour=has_tumour,
        background=bg,
        mask_mpp=mask_mpp,
    )
    write_pyramid(path, renderer, spec)
    return SyntheticSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        tumour_mask=tumour_mask,
        tissue_mask=tissue_mask,
        mask_mpp=mask_mpp,
        has_tumour=has_tumour,
    )


def _mask_mpp(mask_mpp: float | None, width: int, height: int, mpp: float) -> float:
    """The checked ``mask_mpp``, or the default: ``16 * mpp``, doubled until the mask is <= 8 Mpx."""
    if mask_mpp is None:
        out = 16.0 * mpp
        while (width / 16.0) * (height / 16.0) * (16.0 * mpp / out) ** 2 > _MAX_DEFAULT_MASK_PIXELS:
            out *= 2.0  # keep the layout (6 float32 fields at mask size) within ~200 MB
        return out
    out = check_positive_float("mask_mpp", mask_mpp)
    if out < mpp:
        raise InvalidParameterError(
            f"mask_mpp ({out}) must be >= mpp ({mpp}): the masks are no finer than level 0."
        )
    return out
