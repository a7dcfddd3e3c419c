"""Dark-field recognition: a fluorescence image stored as 8-bit RGB is not a brightfield slide.

A brightfield scan (H&E, IHC) is light: the empty glass is bright and nearly neutral, and stained tissue
absorbs only part of the light, so most of a slide's low-resolution image is light. A fluorescence image
exported as 8-bit RGB (a false-colour composite, a camera's RGB capture) is the opposite: a near-black
background with coloured signal. Its tissue detection makes no sense (the black background has a high
optical density in every channel), so :func:`slidescope.wsi.detect_tissue` refuses it with the
fluorescence message instead of finding nothing and suggesting the tissue is "pale".

The test (:func:`darkfield_stats`, :func:`is_darkfield`) runs on the image tissue detection reads anyway
(area-averaged, 32 µm/px by default). The image is dark-field when either

- at least :data:`DARK_FRACTION` of its pixels are near-black (brightest channel below :data:`DARK_LEVEL`
  of 255) **and** fewer than :data:`LIGHT_FRACTION` are light (channel mean at least :data:`LIGHT_LEVEL`):
  a section on a black background. Both must hold, so a brightfield scan with black fill around the
  scanned area (some scanners) keeps its glass and is not refused; or
- fewer than :data:`MIDTONE_FRACTION` of its pixels reach even a mid-tone (channel mean at least
  :data:`MIDTONE_LEVEL`): signal over the whole field, nothing of it as light as stained tissue.

On the real H&E slides of the tests (at 8 and 32 µm/px) the near-black share is at most 0.02 % (the rule
needs 50 %), the light share at least 42 % and the mid-tone share at least 94 % (the rule needs under
1 %); on the synthetic IHC slide (blue counterstain and dark DAB over the whole field) 0 %, 11 % and 72 %
(tests/wsi/test_darkfield.py checks these margins). A fluorescence image
with bright signal over most of the field (mean above the mid-tone) is missed: a false refusal of a
brightfield slide would be worse. A slide refused wrongly is analysed anyway with
``detect_tissue(..., allow_darkfield=True)`` or ``SLIDESCOPE_ALLOW_DARKFIELD=1`` in the environment (the
command line's way out).
"""

from __future__ import annotations

import os

import numpy as np

#: a pixel whose brightest channel is below this (of 255) is near-black
DARK_LEVEL = 50
#: share of near-black pixels from which an image may be dark-field
DARK_FRACTION = 0.5
#: a pixel whose channel mean is at least this is light (glass, most stained tissue)
LIGHT_LEVEL = 150
#: share of light pixels below which a mostly near-black image is dark-field
LIGHT_FRACTION = 0.05
#: a pixel whose channel mean is at least this is a mid-tone or lighter
MIDTONE_LEVEL = 100
#: share of mid-tone pixels below which an image is dark-field whatever its near-black share
MIDTONE_FRACTION = 0.01
#: the environment variable that turns the refusal off (any value but "", "0", "false", "no")
ALLOW_ENV = "SLIDESCOPE_ALLOW_DARKFIELD"


def darkfield_stats(rgb: np.ndarray, max_samples: int = 250_000) -> dict[str, float]:
    """``{"dark_fraction", "light_fraction", "midtone_fraction"}`` of a low-resolution RGB image of a slide.

    ``rgb``: uint8 (h, w, 3). ``dark_fraction``: share of pixels whose brightest channel is below
    :data:`DARK_LEVEL`; ``light_fraction``: share whose channel mean is at least :data:`LIGHT_LEVEL`;
    ``midtone_fraction``: at least :data:`MIDTONE_LEVEL`. A regular subsample of at most ``max_samples``
    pixels is used.
    """
    flat = np.asarray(rgb).reshape(-1, 3)
    if len(flat) == 0:
        return {"dark_fraction": 0.0, "light_fraction": 1.0, "midtone_fraction": 1.0}
    sub = flat[:: max(1, len(flat) // max_samples)]
    # per channel, not reductions along the 3-wide axis (~10x slower in numpy)
    r, g, b = sub[:, 0], sub[:, 1], sub[:, 2]
    dark = float((np.maximum(np.maximum(r, g), b) < DARK_LEVEL).mean())
    total = r.astype(np.uint16) + g + b
    light, midtone = float((total >= 3 * LIGHT_LEVEL).mean()), float((total >= 3 * MIDTONE_LEVEL).mean())
    return {
        "dark_fraction": round(dark, 5),
        "light_fraction": round(light, 5),
        "midtone_fraction": round(midtone, 5),
    }


def is_darkfield(stats: dict[str, float]) -> bool:
    """True when :func:`darkfield_stats` says dark background (see the module docstring)."""
    on_black = stats["dark_fraction"] >= DARK_FRACTION and stats["light_fraction"] < LIGHT_FRACTION
    return on_black or stats["midtone_fraction"] < MIDTONE_FRACTION


def darkfield_allowed(allow: bool = False) -> bool:
    """``allow``, or the environment variable :data:`ALLOW_ENV` set to a true value."""
    env = os.environ.get(ALLOW_ENV, "").strip().lower()
    return bool(allow) or env not in ("", "0", "false", "no")


def darkfield_refusal(stats: dict[str, float]) -> str:
    """The refusal of a dark-field RGB image, after its name: one line, with the way out."""
    return (
        f"looks like a fluorescence image stored as 8-bit RGB (dark background: {stats['dark_fraction']:.0%} "
        f"of it near-black, {stats['midtone_fraction']:.1%} mid-tone or lighter): slidescope's encoders are for "
        f"brightfield H&E/IHC scans and fluorescence images are not analysed; analyse it with a fluorescence "
        f"pipeline, or scan the section in brightfield. If it is a brightfield scan, pass --allow-darkfield "
        f"(allow_darkfield=True to detect_tissue, or set {ALLOW_ENV}=1)"
    )
