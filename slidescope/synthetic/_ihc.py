"""``make_synthetic_ihc_slide``: a small IHC-like slide (blue counterstain, brown DAB patches)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from ._checks import check_int, check_positive_float

#: Unit optical density (log10, R, G, B) of a blued haematoxylin counterstain as IHC scans show it:
#: red absorbed most, then green, blue least, so it looks blue (about (150, 170, 210) at 0.4 units).
#: It is bluer than the Ruifrok H&E haematoxylin vector (0.65, 0.70, 0.29), whose green absorption
#: exceeds its red.
IHC_OD_COUNTERSTAIN = (0.60, 0.47, 0.22)


@dataclass(frozen=True)
class SyntheticIHCSlide:
    """What :func:`make_synthetic_ihc_slide` wrote.

    ``dab_mask`` is a boolean ``(rows, cols)`` array at ``mask_mpp`` (16 x ``mpp``), True where the
    DAB patches are; the tissue covers the whole slide.
    """

    path: Path
    width: int
    height: int
    mpp: float
    dab_mask: np.ndarray
    mask_mpp: float


def make_synthetic_ihc_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 2048,
    height: int = 1536,
    mpp: float = 0.5,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> SyntheticIHCSlide:
    """Write a small IHC-like slide: blue haematoxylin counterstain over the whole field, brown DAB patches.

    Beer-Lambert over a (242, 242, 242) light: counterstain :data:`IHC_OD_COUNTERSTAIN` at 0.35-0.75
    units with a nuclear texture, and DAB (the H-E-DAB vector of :data:`skimage.color.rgb_from_hed`)
    at 0.4-1.0 units in smooth patches covering about a third of the field. No glass is visible, as
    on a section that fills the scanned region. One tiled JPEG level with the pixel size in the TIFF
    resolution tags (openslide's generic TIFF reader and tiffslide both open it).

    Parameters
    ----------
    path : output ``.tiff`` file; parent folders are created.
    width, height : level-0 size in pixels (at least 64 each).
    mpp : microns per pixel at level 0.
    seed : random seed (>= 0); the same seed and arguments give the same pixels.
    jpeg_quality : JPEG quality of the tiles (1-100).

    Returns
    -------
    A :class:`SyntheticIHCSlide` with the path and the DAB-patch mask.

    Raises
    ------
    InvalidParameterError
        A size, mpp, seed or quality that cannot work.
    """
    from skimage.color import rgb_from_hed

    width = check_int("width", width, 64)
    height = check_int("height", height, 64)
    mpp = check_positive_float("mpp", mpp)
    seed = check_int("seed", seed, 0)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x1AC])
    f = 16  # level-0 pixels per mask pixel
    shape = (-(-height // f), -(-width // f))

    def smooth(sigma: float) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        return (field - field.min()) / max(float(np.ptp(field)), 1e-9)

    c_h = 0.35 + 0.4 * smooth(2.0)
    patches = smooth(4.0)
    c_d = np.where(patches > 0.6, 0.4 + 1.5 * (patches - 0.6), 0.0)

    def level0(low: np.ndarray) -> np.ndarray:
        big = ndimage.zoom(low, f, order=1, grid_mode=True, mode="nearest")
        return big[:height, :width].astype(np.float32)

    texture = ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), 2.0)
    texture /= max(float(texture.std()), 1e-6)
    haem = level0(c_h) * np.clip(1.0 + 0.35 * texture, 0.3, 2.0)
    od = haem[..., None] * np.asarray(IHC_OD_COUNTERSTAIN, np.float32)
    od += level0(c_d)[..., None] * rgb_from_hed[2].astype(np.float32)
    light = 242.0 + rng.normal(0.0, 1.5, (height, width, 3)).astype(np.float32)
    rgb = np.clip(np.rint(light * 10.0 ** (-od)), 0, 255).astype(np.uint8)
    res = 1e4 / mpp  # pixels per centimetre
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
    return SyntheticIHCSlide(
        path=path, width=width, height=height, mpp=mpp, dab_mask=c_d > 0, mask_mpp=f * mpp
    )
