"""Argument checks shared by the slide generators: each bad value gets an error that names the fix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidParameterError


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``, else :class:`InvalidParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidParameterError(f"{name} must be {bound}, got {value}.")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """``value`` as a finite float > 0, else :class:`InvalidParameterError`."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}.") from None
    if not math.isfinite(out) or out <= 0:
        raise InvalidParameterError(f"{name} must be a finite number > 0 (microns per pixel), got {value!r}.")
    return out


def check_rgb(name: str, value: Any) -> tuple[int, int, int]:
    """``value`` as three integers 0-255, else :class:`InvalidParameterError`."""
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{name} must be three integers 0-255 (R, G, B), got {value!r}."
        ) from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise InvalidParameterError(f"{name} must be three integers 0-255 (R, G, B), got {value!r}.")
    return rgb[0], rgb[1], rgb[2]
