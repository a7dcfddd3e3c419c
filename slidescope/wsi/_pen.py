"""Pen and ink removal of tissue detection (steps 4 and 4a of :mod:`slidescope.wsi._tissue`).

* :func:`pen_mask`: blue/green/cyan ink, black ink and blue ink over tissue, in a low-resolution RGB image;
* :func:`dab_brown`: the IHC test of ``pen="auto"`` (DAB-brown share of the tissue
  candidate), which turns pen removal off where the blue counterstain would be taken for ink;
* :func:`pen_hint`: the advice the empty-tissue errors add when pen removal took most of the tissue.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidParameterError

__all__ = [
    "PEN_MODES",
    "DAB_MIN_OD",
    "DAB_BLUE_GREEN_RATIO",
    "DAB_GREEN_RED_MIN",
    "DAB_IHC_FRACTION",
    "PEN_HINT_FRACTION",
    "check_pen_mode",
    "dab_brown",
    "pen_mask",
    "pen_hint",
]

#: Values of the ``pen`` option: remove ink, keep everything, or remove it unless the slide looks like IHC.
PEN_MODES = ("on", "off", "auto")
#: DAB concentration (log10 OD units of the deconvolution) above which a pixel can count as DAB-stained:
#: a weak but clear brown; glass noise and the faint tails of other stains stay below ~0.05.
DAB_MIN_OD = 0.15
#: Brown hue gate: OD_blue >= this x OD_green. DAB alone gives 1.37 (0.27, 0.57, 0.78 per unit), DAB under as
#: much blue counterstain 0.96; the magenta of H&E (eosin absorbs green) stays <= 0.8 on the real scans.
DAB_BLUE_GREEN_RATIO = 0.9
#: Brown hue gate: OD_green - OD_red above this. Excludes neutral black ink (equal ODs), which the
#: deconvolution reads as DAB + haematoxylin, and blue/green ink (green absorbed least or less than red).
DAB_GREEN_RED_MIN = 0.05
#: ``pen="auto"`` takes a slide as IHC when this fraction of the tissue candidate is DAB-brown. Measured
#: at 8 µm/px: real and synthetic H&E <= 0.0001 (also with blue, green and black pen strokes), synthetic
#: IHC 0.11-0.40; 1 % leaves a margin of 100x on the H&E side and ~10x on the IHC side.
DAB_IHC_FRACTION = 0.01
#: Pen removal that takes more than this fraction of the tissue candidate is suspicious (a blue
#: counterstain?): the empty-tissue errors then suggest ``--pen off`` (:func:`pen_hint`).
PEN_HINT_FRACTION = 0.5


def check_pen_mode(pen: Any, remove_pen: bool | None) -> str:
    """The checked ``pen`` value; ``remove_pen`` (the older bool spelling), when given, decides."""
    if remove_pen is not None:
        return "on" if remove_pen else "off"
    if pen not in PEN_MODES:
        raise InvalidParameterError(f"pen must be one of {', '.join(PEN_MODES)}, got {pen!r}")
    return str(pen)


def dab_brown(od: list[np.ndarray]) -> np.ndarray:
    """Pixels stained DAB-brown (step 4a): deconvolved DAB above :data:`DAB_MIN_OD` and a brown hue."""
    from skimage.color import hed_from_rgb

    # colour deconvolution of the log10 optical densities: column 2 of hed_from_rgb gives DAB
    m = hed_from_rgb.astype(np.float32)
    dab = od[0] * m[0, 2] + od[1] * m[1, 2] + od[2] * m[2, 2]
    return (
        (dab > DAB_MIN_OD)
        & (od[2] >= np.float32(DAB_BLUE_GREEN_RATIO) * od[1])
        & (od[1] - od[0] > np.float32(DAB_GREEN_RED_MIN))
    )


def pen_mask(rgb: np.ndarray, od: list[np.ndarray], glass: np.ndarray, *, margin: bool = True) -> np.ndarray:
    """Pen and ink pixels of a low-resolution RGB image (step 4), with a one-pixel margin.

    Parameters
    ----------
    rgb : uint8 ndarray, shape (h, w, 3)
    od : the optical densities relative to the glass, one (h, w) float32 array per channel.
    glass : RGB of the empty glass (it white-balances the image).
    margin : add the one-pixel margin (a 3 x 3 dilation); False gives the per-pixel rule alone, so ``rgb``
        may then be any array of pixels (..., 3).

    Returns
    -------
    bool ndarray, shape (h, w)
    """
    from scipy import ndimage

    # white-balanced intensities (glass -> ~255)
    gain = [np.float32(255.0 / max(float(glass[c]), 1.0)) for c in range(3)]
    r, g, b = (np.minimum(rgb[..., c] * gain[c], np.float32(255.0)) for c in range(3))
    vmax = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    # blue / green / cyan ink: red clearly below green (H&E and DAB never do this)
    coloured_ink = (g - r > 15.0) & (np.maximum(g, b) - r > 30.0)
    # black ink: nearly neutral and dark, or darker than any stained tissue at this scale
    # (dense haematoxylin / keratin stay purple: HSV saturation > 0.5, max channel > 45)
    sat = (vmax - vmin) / np.maximum(vmax, 1.0)
    black_ink = (vmax < 40.0) | ((vmax < 90.0) & (sat < 0.25))
    # blue ink over tissue turns dark blue-violet like dense haematoxylin, but absorbs far
    # less blue relative to red: OD_B / OD_R ~0.2 against >= 0.4 for haematoxylin, more for
    # eosin and DAB
    blue_over_tissue = (od[0] > 0.5) & (od[2] < 0.3 * od[0])
    pen = coloured_ink | black_ink | blue_over_tissue
    if margin and pen.any():
        pen = ndimage.binary_dilation(pen, structure=np.ones((3, 3), bool))
    return pen


def pen_hint(mask: Any) -> str:
    """Advice to add to an empty-tissue error when pen removal took most of the tissue candidate.

    Parameters
    ----------
    mask : a :class:`~slidescope.wsi.TissueMask` from :func:`~slidescope.wsi.detect_tissue` (or its
        ``params``); anything without detection parameters (None, a mask made from GeoJSON) gives "".

    Returns
    -------
    str
        ``""``, or a sentence (with a leading space) suggesting ``--pen off`` when pen removal was on
        and excluded more than :data:`PEN_HINT_FRACTION` of what scored as tissue (e.g. the blue
        counterstain of an IHC slide with too little DAB for ``pen="auto"`` to notice).
    """
    params = getattr(mask, "params", mask)
    if not isinstance(params, dict):  # None, or a mask-like object without detection parameters
        return ""
    removed = float(params.get("pen_removed_fraction") or 0.0)
    if params.get("pen_used") != "on" or removed <= PEN_HINT_FRACTION:
        return ""
    return (
        f" Pen removal excluded {removed:.0%} of what looked like tissue: if the slide is IHC or has a "
        f"blue counterstain, run again with --pen off (pen='off')."
    )
