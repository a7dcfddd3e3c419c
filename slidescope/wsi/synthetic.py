"""Synthetic H&E-like whole-slide images with exact ground truth.

:func:`make_synthetic_slide` writes an Aperio-SVS-style pyramidal tiled TIFF (JPEG tiles, YCbCr 4:2:0)
that OpenSlide (vendor ``aperio``) and tiffslide both open, reporting the same dimensions, levels and
microns per pixel. The picture is drawn from a small set of low-resolution *layout* fields (tissue,
tumour, fat, stroma density, fibre orientation) sampled at ``mask_mpp``; the returned ``tissue_mask``
and ``tumour_mask`` are exactly those fields thresholded, and every level-0 pixel is classified by
thresholding the same fields, bilinearly interpolated, so the masks and the pixels agree.

The look, in brief:

* glass: ``background`` with faint scanner noise;
* ``n_islands`` irregular tissue islands covering 30-50 % of the glass;
* stroma: eosin-pink wavy collagen fibres, sparse nuclei (elongated fibroblasts, small dark
  lymphocytes, oval others, 6-12 um), patches of fat (white vacuoles with thin pink membranes);
* tumour (``tumour=True``): one to three blobs, 8-16 % of the tissue, with crowded, large (9-15 um),
  pleomorphic, hyperchromatic nuclei on pale purple cytoplasm and little stroma.

Colours come from a Beer-Lambert model: each pixel has a haematoxylin and an eosin concentration and
``I = background * exp(-(c_H * OD_H + c_E * OD_E))``, with the unit optical densities chosen so that
one unit of eosin over the default background is about (230, 150, 190) and one unit of haematoxylin
about (80, 60, 140).

Level 0 is rendered in chunks of one tile row by up to 2048 pixels, on a small thread pool that also
JPEG-encodes the tiles, and streamed to :class:`tifffile.TiffWriter`; the lower levels are 4x box
downsamples accumulated while level 0 streams (the 4x-reduced level lives in memory, or in a temporary
file next to the output when it would exceed 512 MiB). Nuclei and fat cells come from hash-seeded
jittered grids in global level-0 coordinates, so they are continuous across tile borders and
independent of the chunking. The same ``seed`` and arguments give the same bytes.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from scipy import ndimage, sparse

from slidescope.errors import InvalidParameterError

__all__ = ["SyntheticSlide", "make_synthetic_slide", "SyntheticIHCSlide", "make_synthetic_ihc_slide"]

# --------------------------------------------------------------------------------------------------
# Constants

#: Reference background and the colours one unit of each stain gives over it (Beer-Lambert).
_REF_BG = 242.0
_OD_EOSIN = (-np.log(np.array([230.0, 150.0, 190.0]) / _REF_BG)).astype(np.float32)
_OD_HAEM = (-np.log(np.array([80.0, 60.0, 140.0]) / _REF_BG)).astype(np.float32)

_CHUNK_WIDTH = 2048  # level-0 pixels per render chunk (rounded to whole tiles)
_LEVEL_FACTOR = 4  # downsample between pyramid levels
_AUTO_MIN_SIDE = 1000  # n_levels=None: add levels while the smallest side is above this
_THUMB_MAX_SIDE = 768
_MEMMAP_THRESHOLD = 512 * 2**20  # bytes of the 4x-reduced level above which it goes to a temp file
_MAX_WORKERS = 4
_MAX_DEFAULT_MASK_PIXELS = 8_000_000  # default mask_mpp doubles from 16 * mpp until the mask is this small

# Nuclei: jittered grid of this cell size (um), this many independent layers.
_NUC_CELL_UM = 11.0
_NUC_LAYERS = 2
_NUC_MAX_SEMI_AXIS_NORMAL_UM = 6.0
_NUC_MAX_SEMI_AXIS_TUMOUR_UM = 7.5
_TUMOUR_DENSITY = 0.0065  # nuclei per um^2 (6500 / mm^2)
_STROMA_DENSITY = (0.0010, 0.0016)  # base + D * extra

# Fat: adipocytes on a jittered grid of this cell size (um).
_FAT_CELL_UM = 55.0
_FAT_MEMBRANE_UM = 0.9

_SOFTWARE = "slidescope synthetic"
_HEADER = "Aperio Image Library v12.0.15 (slidescope synthetic H&E)"

# splitmix64 constants
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_PRIME_J = np.uint64(0xC2B2AE3D27D4EB4F)
_U64_MASK = (1 << 64) - 1


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


# --------------------------------------------------------------------------------------------------
# Parameter checks


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidParameterError(f"{name} must be {bound}, got {value}.")
    return value


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}.") from None
    if not math.isfinite(out) or out <= 0:
        raise InvalidParameterError(f"{name} must be a finite number > 0 (microns per pixel), got {value!r}.")
    return out


def _level_dims(width: int, height: int, n_levels: int | None) -> list[tuple[int, int]]:
    dims = [(width, height)]
    if n_levels is None:
        while min(dims[-1]) > _AUTO_MIN_SIDE:
            w, h = dims[-1]
            dims.append((-(-w // _LEVEL_FACTOR), -(-h // _LEVEL_FACTOR)))
        return dims
    for _ in range(n_levels - 1):
        w, h = dims[-1]
        if w == 1 and h == 1:
            raise InvalidParameterError(
                f"n_levels={n_levels} is too many for a {width} x {height} slide: level {len(dims) - 1} is "
                f"already 1 x 1 px. Use at most {len(dims)} levels, or n_levels=None for the default."
            )
        dims.append((-(-w // _LEVEL_FACTOR), -(-h // _LEVEL_FACTOR)))
    return dims


# --------------------------------------------------------------------------------------------------
# Hash-based per-cell random numbers (deterministic in global coordinates)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


def _scalar_key(*parts: int) -> np.uint64:
    z = 0x2545F4914F6CDD1D
    for p in parts:
        z = (z ^ (int(p) & _U64_MASK)) * 0x9E3779B97F4A7C15 & _U64_MASK
        z ^= z >> 29
    return np.uint64(z)


def _cell_uniforms(key: np.uint64, i: np.ndarray, j: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` independent U[0, 1) arrays for the cells ``(i, j)`` (int64 arrays, any sign)."""
    base = _mix64((i.astype(np.uint64) * _GOLDEN) ^ (j.astype(np.uint64) * _PRIME_J) ^ key)
    out = []
    for k in range(count):
        z = _mix64(base + np.uint64((k + 1) * 0x9E3779B97F4A7C15 & _U64_MASK))
        out.append((z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53))
    return out


# --------------------------------------------------------------------------------------------------
# Smooth noise for the layout (cubic B-spline of a random lattice, evaluated with sparse matrices)


def _bspline_matrix(pos: np.ndarray, n: int) -> sparse.csr_matrix:
    i = np.floor(pos).astype(np.int64)
    t = pos - i
    w = [
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    ]
    rows = np.repeat(np.arange(pos.size), 4)
    cols = np.clip(np.stack([i - 1, i, i + 1, i + 2], axis=1), 0, n - 1).ravel()
    vals = np.stack(w, axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(pos.size, n))


class _NoiseSampler:
    """Smooth Gaussian-ish noise in physical coordinates, sampled at the mask pixel centres."""

    def __init__(
        self, rng: np.random.Generator, ys_um: np.ndarray, xs_um: np.ndarray, extent_um: tuple[float, float]
    ):
        self.rng = rng
        self.ys_um = ys_um
        self.xs_um = xs_um
        self.extent_um = extent_um

    def noise(self, spacing_um: float) -> np.ndarray:
        spacing_um = max(float(spacing_um), 20.0)
        ny = math.ceil(self.extent_um[0] / spacing_um) + 5
        nx = math.ceil(self.extent_um[1] / spacing_um) + 5
        lattice = self.rng.standard_normal((ny, nx))
        my = _bspline_matrix(self.ys_um / spacing_um + 2.0, ny)
        mx = _bspline_matrix(self.xs_um / spacing_um + 2.0, nx)
        field = np.ascontiguousarray(np.asarray(mx @ (my @ lattice).T, dtype=np.float32).T)
        std = float(field.std(dtype=np.float64))
        if std > 0:
            field *= np.float32(1.0 / std)
        return field

    def fbm(self, spacings_um: list[float], amps: list[float] | None = None) -> np.ndarray:
        amps = amps or [0.5**k for k in range(len(spacings_um))]
        out = np.zeros((self.ys_um.size, self.xs_um.size), np.float32)
        for spacing, amp in zip(spacings_um, amps, strict=True):
            layer = self.noise(spacing)
            layer *= np.float32(amp)
            out += layer
        std = float(out.std(dtype=np.float64))
        if std > 0:
            out *= np.float32(1.0 / std)
        return out


# --------------------------------------------------------------------------------------------------
# Layout: tissue / tumour / fat / stroma fields at mask resolution


class _Layout:
    """The low-resolution fields the slide is drawn from, one value per mask pixel.

    ``fields`` is a float32 ``(6, rows + 1, cols + 1)`` stack (edge-padded by one for bilinear
    interpolation) of: tissue (> 0 is tissue), tumour (> 0 inside tissue is tumour), stroma density
    [0, 1], fibre orientation weight [0, 1], fat (> 0 in normal tissue is fat), tumour nest density
    [0, 1].
    """

    TISSUE, TUMOUR, DENSITY, ORIENT, FAT, NEST = range(6)

    def __init__(self, f: float, fields: np.ndarray) -> None:
        self.f = f
        self.shape = (fields.shape[1], fields.shape[2])
        self.fields = np.pad(fields, ((0, 0), (0, 1), (0, 1)), mode="edge")
        self.pixel_fields = self.fields[:4]  # the ones needed at every pixel

    @property
    def tissue(self) -> np.ndarray:
        return self.fields[self.TISSUE, :-1, :-1]

    @property
    def tumour(self) -> np.ndarray:
        return self.fields[self.TUMOUR, :-1, :-1]

    def index(self, coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear lattice index and weight along one axis for level-0 continuous coordinates."""
        m = np.clip(coords / self.f - 0.5, 0.0, n - 1)
        i0 = np.minimum(np.floor(m).astype(np.int64), n - 1)
        return i0, (m - i0).astype(np.float32)

    def sample_points(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """All fields at level-0 continuous coordinates -> (6, N)."""
        i0, wy = self.index(ys, self.shape[0])
        j0, wx = self.index(xs, self.shape[1])
        fp = self.fields
        top = fp[:, i0, j0] * (1 - wx) + fp[:, i0, j0 + 1] * wx
        bot = fp[:, i0 + 1, j0] * (1 - wx) + fp[:, i0 + 1, j0 + 1] * wx
        return top * (1 - wy) + bot * wy

    def window(self, y0: int, x0: int, h: int, w: int) -> tuple[slice, slice]:
        i_lo, _ = self.index(np.array([y0 + 0.5]), self.shape[0])
        i_hi, _ = self.index(np.array([y0 + h - 0.5]), self.shape[0])
        j_lo, _ = self.index(np.array([x0 + 0.5]), self.shape[1])
        j_hi, _ = self.index(np.array([x0 + w - 0.5]), self.shape[1])
        return slice(int(i_lo[0]), int(i_hi[0]) + 2), slice(int(j_lo[0]), int(j_hi[0]) + 2)

    def sample_pixels(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Pixel fields (tissue, tumour, density, orient) at the chunk's pixel centres -> (4, h, w)."""
        i0, wy = self.index(y0 + np.arange(h) + 0.5, self.shape[0])
        j0, wx = self.index(x0 + np.arange(w) + 0.5, self.shape[1])
        rs, cs = self.window(y0, x0, h, w)
        sub = self.pixel_fields[:, rs, cs]
        i0 = i0 - rs.start
        j0 = j0 - cs.start
        wy = wy[None, :, None]
        # np.take keeps C order (fancy indexing on the last axis would return a transposed layout)
        rows = np.take(sub, i0, axis=1) * (1 - wy) + np.take(sub, i0 + 1, axis=1) * wy
        wx = wx[None, None, :]
        return np.take(rows, j0, axis=2) * (1 - wx) + np.take(rows, j0 + 1, axis=2) * wx


def _make_layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    mask_mpp: float,
    n_islands: int,
    tumour: bool,
) -> _Layout:
    """Draw the layout fields at mask resolution (float32, a handful of full-size temporaries)."""
    f = mask_mpp / mpp
    mh = max(1, math.ceil(height / f - 1e-9))
    mw = max(1, math.ceil(width / f - 1e-9))
    h_um, w_um = height * mpp, width * mpp
    ys_um = (np.arange(mh) + 0.5) * mask_mpp
    xs_um = (np.arange(mw) + 0.5) * mask_mpp
    noise = _NoiseSampler(rng, ys_um, xs_um, (h_um, w_um))
    y_col = ys_um.astype(np.float32)[:, None]
    x_row = xs_um.astype(np.float32)[None, :]
    fields = np.empty((6, mh, mw), np.float32)

    def ellipse_field(
        out: np.ndarray,
        wy: np.ndarray,
        wx: np.ndarray,
        cy: float,
        cx: float,
        ry: float,
        rx: float,
        theta: float,
    ) -> None:
        """out = max(out, 1 - elliptical radius), computed on warped coordinates."""
        dy = wy - np.float32(cy)
        dx = wx - np.float32(cx)
        c, s_ = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        u = dx * (c / np.float32(rx)) + dy * (s_ / np.float32(rx))
        dy *= c / np.float32(ry)
        dx *= s_ / np.float32(ry)
        dy -= dx  # v / ry
        u *= u
        dy *= dy
        u += dy
        np.sqrt(u, out=u)
        np.subtract(np.float32(1), u, out=u)
        np.maximum(out, u, out=out)

    # ---- tissue islands: warped ellipses on a loose grid, plus border detail
    coverage = rng.uniform(0.30, 0.50)
    tissue_f = fields[_Layout.TISSUE]
    if n_islands > 0:
        rows_g = max(1, round(math.sqrt(n_islands * h_um / w_um)))
        cols_g = math.ceil(n_islands / rows_g)
        rows_g = math.ceil(n_islands / cols_g)
        cell_h, cell_w = h_um / rows_g, w_um / cols_g
        cells = rng.permutation(rows_g * cols_g)[:n_islands]
        scale = min(1.15, math.sqrt(coverage * rows_g * cols_g / (0.636 * n_islands)))
        mean_r = 0.45 * scale * math.sqrt(cell_h * cell_w)
        warp_y = noise.fbm([mean_r, mean_r / 3])
        warp_y *= np.float32(0.18 * mean_r)
        warp_y += y_col
        warp_x = noise.fbm([mean_r, mean_r / 3])
        warp_x *= np.float32(0.18 * mean_r)
        warp_x += x_row
        tissue_f.fill(-np.inf)
        for cell in cells:
            r, c = divmod(int(cell), cols_g)
            cy = (r + 0.5 + rng.uniform(-0.08, 0.08)) * cell_h
            cx = (c + 0.5 + rng.uniform(-0.08, 0.08)) * cell_w
            ry = 0.45 * scale * cell_h * rng.uniform(0.8, 1.0)
            rx = 0.45 * scale * cell_w * rng.uniform(0.8, 1.0)
            theta = rng.uniform(-0.35, 0.35)
            ellipse_field(tissue_f, warp_y, warp_x, cy, cx, ry, rx, theta)
        del warp_y, warp_x
        detail = noise.fbm([mean_r / 4, mean_r / 10, 40.0], [1.0, 0.6, 0.35])
        detail *= np.float32(0.10)
        tissue_f += detail
        del detail
        # keep clear of the glass edges
        margin = 0.04 * min(h_um, w_um)
        edge_y = np.minimum(y_col, np.float32(h_um) - y_col)
        edge_x = np.minimum(x_row, np.float32(w_um) - x_row)
        edge = np.minimum(edge_y, edge_x)
        edge *= np.float32(-1.0 / margin)
        edge += np.float32(1)
        np.clip(edge, 0, 1, out=edge)
        edge *= np.float32(3)
        tissue_f -= edge
        del edge
        tissue_f -= np.float32(np.quantile(tissue_f, 1.0 - coverage))
    else:
        mean_r = 0.25 * min(h_um, w_um)
        tissue_f.fill(-1.0)
    tissue_m = tissue_f > 0

    # ---- tumour blobs inside tissue
    tumour_f = fields[_Layout.TUMOUR]
    tumour_f.fill(-1.0)
    if tumour and tissue_m.any():
        frac = rng.uniform(0.08, 0.16)
        k = int(rng.integers(1, min(3, n_islands) + 1))
        score = ndimage.distance_transform_edt(np.pad(tissue_m, 1))[1:-1, 1:-1].astype(np.float32)
        tissue_area = tissue_m.sum() * mask_mpp**2
        r_blob = math.sqrt(frac * tissue_area / (k * math.pi))
        warp_y = noise.fbm([r_blob, r_blob / 3])
        warp_y *= np.float32(0.25 * r_blob)
        warp_y += y_col
        warp_x = noise.fbm([r_blob, r_blob / 3])
        warp_x *= np.float32(0.25 * r_blob)
        warp_x += x_row
        tumour_f.fill(-np.inf)
        for _ in range(k):
            if score.max() <= 0:
                break
            cand = np.flatnonzero(score >= 0.7 * score.max())
            idx = int(cand[rng.integers(cand.size)])
            ci, cj = divmod(idx, mw)
            cy, cx = ys_um[ci], xs_um[cj]
            ry = r_blob * rng.uniform(0.8, 1.2)
            rx = r_blob * rng.uniform(0.8, 1.2)
            ellipse_field(tumour_f, warp_y, warp_x, cy, cx, ry, rx, 0.0)
            away = np.hypot(y_col - np.float32(cy), x_row - np.float32(cx))
            away *= np.float32(1.0 / (3.0 * r_blob))
            np.minimum(away, 1, out=away)
            score *= away
            del away
        del warp_y, warp_x, score
        detail = noise.fbm([r_blob / 2, r_blob / 5, 40.0], [1.0, 0.6, 0.3])
        detail *= np.float32(0.12)
        tumour_f += detail
        del detail
        tumour_f -= np.float32(np.quantile(tumour_f[tissue_m], 1.0 - frac))
        # tumour only inside tissue: make that explicit in the field too
        np.minimum(tumour_f, np.where(tissue_m, np.float32(np.inf), np.float32(-1e-3)), out=tumour_f)
    tumour_m = tissue_m & (tumour_f > 0)

    # ---- fat patches in non-tumour tissue, stroma density, fibre orientation, tumour nests
    fat = noise.fbm([max(4 * _FAT_CELL_UM, mean_r / 3), 3 * _FAT_CELL_UM])
    normal = tissue_m & ~tumour_m
    if normal.any():
        fat -= np.float32(np.quantile(fat[normal], 1.0 - rng.uniform(0.06, 0.15)))
    else:
        fat.fill(-1.0)
    fields[_Layout.FAT] = fat
    del fat, normal, tissue_m, tumour_m
    for index, spacings, gain in (
        (_Layout.DENSITY, [500.0, 150.0], 1.0),
        (_Layout.ORIENT, [300.0, 120.0], 1.5),
        (_Layout.NEST, [40.0], 1.5),
    ):
        g = noise.fbm(spacings)
        g *= np.float32(gain)
        np.tanh(g, out=g)
        g *= np.float32(0.5)
        g += np.float32(0.5)
        fields[index] = g
        del g
    return _Layout(f, fields)


# --------------------------------------------------------------------------------------------------
# Periodic textures (fibres, grain)


def _filtered_noise(rng: np.random.Generator, size: int, filt: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((size, size))
    out = np.fft.ifft2(np.fft.fft2(noise) * filt).real
    return out / (out.std() or 1.0)


def _fibre_texture(rng: np.random.Generator, size: int, mpp: float, theta: float) -> np.ndarray:
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.fftfreq(size)[None, :]
    kpar = kx * math.cos(theta) + ky * math.sin(theta)
    kperp = -kx * math.sin(theta) + ky * math.cos(theta)
    l_par, l_perp = 22.0 / mpp, 1.1 / mpp
    fib = _filtered_noise(rng, size, np.exp(-2 * math.pi**2 * (l_par**2 * kpar**2 + l_perp**2 * kperp**2)))
    # wavy collagen: displace across the fibres by a smooth periodic field
    l_w = 25.0 / mpp
    wave = _filtered_noise(rng, size, np.exp(-2 * math.pi**2 * l_w**2 * (kx**2 + ky**2))) * (3.0 / mpp)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = [yy + wave * math.cos(theta), xx - wave * math.sin(theta)]
    fib = ndimage.map_coordinates(fib, coords, order=1, mode="grid-wrap")
    return (0.5 + 0.5 * np.tanh(1.3 * fib)).astype(np.float32)


def _grain_texture(rng: np.random.Generator, size: int, mpp: float) -> np.ndarray:
    k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    sigma = max(0.35 / mpp, 0.5)
    return _filtered_noise(rng, size, np.exp(-2 * math.pi**2 * sigma**2 * k2)).astype(np.float32)


def _gather(tex: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    p0, p1 = tex.shape
    r = y0 % p0
    block = tex[r : r + h] if r + h <= p0 else np.take(tex, (y0 + np.arange(h)) % p0, axis=0)
    c = x0 % p1
    if c + w <= p1:
        return np.ascontiguousarray(block[:, c : c + w])
    return np.take(block, (x0 + np.arange(w)) % p1, axis=1)


# --------------------------------------------------------------------------------------------------
# Renderer


class _Renderer:
    def __init__(
        self,
        layout: _Layout,
        *,
        seed: int,
        mpp: float,
        background: tuple[int, int, int],
    ) -> None:
        self.layout = layout
        self.mpp = mpp
        self.seed = seed
        self.bg = np.asarray(background, np.float32)
        trng = np.random.default_rng([seed, 0x7E57])
        self.theta_a = float(trng.uniform(0, math.pi))
        self.theta_b = self.theta_a + float(trng.uniform(0.9, 1.6))
        self.tex_a = _fibre_texture(trng, 1024, mpp, self.theta_a)
        self.tex_b = _fibre_texture(trng, 768, mpp, self.theta_b)
        self.grain = _grain_texture(trng, 512, mpp)
        self.nuc_cell = _NUC_CELL_UM / mpp
        self.nuc_keys = [_scalar_key(seed, 0xC0FFEE, layer) for layer in range(_NUC_LAYERS)]
        self.fat_cell = _FAT_CELL_UM / mpp
        self.fat_key = _scalar_key(seed, 0xFA7)
        self.stamp_normal = 2 * math.ceil(_NUC_MAX_SEMI_AXIS_NORMAL_UM / mpp + 1.5) + 1
        self.stamp_tumour = 2 * math.ceil(_NUC_MAX_SEMI_AXIS_TUMOUR_UM / mpp + 1.5) + 1

    # -- background ------------------------------------------------------------------------------

    def _finish(self, c_h: np.ndarray | None, c_e: np.ndarray | None, grain: np.ndarray) -> np.ndarray:
        """Beer-Lambert compositing, one colour plane at a time (much faster than (h, w, 3) broadcasts)."""
        h, w = grain.shape
        out = np.empty((h, w, 3), np.uint8)
        base = grain * np.float32(0.8)
        base += np.float32(0.5)  # rounding
        for ch in range(3):
            if c_h is None or c_e is None:
                plane = base + self.bg[ch]
            else:
                plane = c_h * -_OD_HAEM[ch]
                plane -= c_e * _OD_EOSIN[ch]
                np.exp(plane, out=plane)
                plane *= base + (self.bg[ch] - np.float32(0.5))
                plane += np.float32(0.5)
            np.minimum(plane, np.float32(255), out=plane)
            np.maximum(plane, np.float32(0), out=plane)
            out[:, :, ch] = plane
        return out

    # -- chunk -----------------------------------------------------------------------------------

    def is_glass(self, y0: int, x0: int, h: int, w: int) -> bool:
        """True if the block has no tissue pixel (its pixels then depend only on the grain phase)."""
        rs, cs = self.layout.window(y0, x0, h, w)
        return not bool((self.layout.pixel_fields[0, rs, cs] > 0).any())

    def glass_key(self, y0: int, x0: int, h: int, w: int) -> tuple[int, int, int, int]:
        """Blocks of glass with equal keys have equal pixels."""
        return y0 % self.grain.shape[0], x0 % self.grain.shape[1], h, w

    def render(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of level-0 pixels [y0, y0+h) x [x0, x0+w)."""
        lay = self.layout
        grain = _gather(self.grain, y0, x0, h, w)
        if self.is_glass(y0, x0, h, w):
            return self._finish(None, None, grain)
        fields = lay.sample_pixels(y0, x0, h, w)
        tissue = fields[0] > 0
        tum = tissue & (fields[1] > 0)
        density = fields[2]
        fa = _gather(self.tex_a, y0, x0, h, w)
        fb = _gather(self.tex_b, y0, x0, h, w)
        fib = fb + fields[3] * (fa - fb)

        # stroma: eosin fibres, faint haematoxylin counterstain
        c_e = (0.5 + 0.5 * density) * (0.30 + 0.85 * fib)
        c_h = np.full((h, w), 0.05, np.float32)
        any_tum = bool(tum.any())
        if any_tum:
            # tumour: pale purple cytoplasm, little stroma
            c_e = np.where(tum, 0.26 + 0.18 * fib, c_e)
            c_h = np.where(tum, np.float32(0.17), c_h)

        nuc = self._nuclei(y0, x0, h, w)
        if nuc is not None:
            amp = np.where(tum, np.float32(0.35), np.float32(0.18)) if any_tum else np.float32(0.18)
            nuc *= 1.0 + amp * grain
            np.clip(nuc, 0.0, 2.4, out=nuc)

        fat = self._fat(y0, x0, h, w)
        if fat is not None:
            fat_px, membrane = fat
            fat_px &= tissue & ~tum
            c_e = np.where(fat_px, 0.05 + 0.85 * membrane, c_e)
            c_h = np.where(fat_px, 0.04 * membrane, c_h)
            if nuc is not None:
                nuc = np.where(fat_px, nuc * membrane, nuc)
        if nuc is not None:
            c_h = c_h + nuc
        c_e = np.where(tissue, c_e, np.float32(0)).astype(np.float32, copy=False)
        c_h = np.where(tissue, c_h, np.float32(0)).astype(np.float32, copy=False)
        return self._finish(c_h, c_e, grain)

    # -- nuclei ----------------------------------------------------------------------------------

    def _nuclei(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        c = self.nuc_cell
        margin = self.stamp_tumour / 2 + 1
        i_lo, i_hi = math.floor((y0 - margin) / c), math.floor((y0 + h + margin) / c)
        j_lo, j_hi = math.floor((x0 - margin) / c), math.floor((x0 + w + margin) / c)
        ii, jj = np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        cell_area_um = _NUC_CELL_UM**2
        groups: dict[bool, list[np.ndarray]] = {False: [], True: []}
        for key in self.nuc_keys:
            u = _cell_uniforms(key, ii, jj, 8)
            cy = (ii + u[0]) * c
            cx = (jj + u[1]) * c
            pf = self.layout.sample_points(cy, cx)
            tissue, tumour, dens, orient, fat, nest = pf
            in_tissue = tissue > 0
            is_tum = in_tissue & (tumour > 0)
            is_norm = in_tissue & ~is_tum & (fat <= 0)
            lam = np.where(
                is_tum,
                _TUMOUR_DENSITY * (0.7 + 0.3 * nest),
                np.where(is_norm, _STROMA_DENSITY[0] + _STROMA_DENSITY[1] * dens, 0.0),
            )
            keep = u[2] < lam * cell_area_um / _NUC_LAYERS
            if not keep.any():
                continue
            cy, cx, is_tum, orient = cy[keep], cx[keep], is_tum[keep], orient[keep]
            u3, u4, u5, u6, u7 = (v[keep] for v in u[3:8])
            # normal stroma: fibroblasts along the fibres, lymphocytes, oval others
            fibro = u3 < 0.55
            lymph = (u3 >= 0.55) & (u3 < 0.85)
            fib_theta = np.where(orient > 0.5, self.theta_a, self.theta_b)
            a = np.where(
                fibro, 4.0 + 2.0 * u4, np.where(lymph, (2.8 + 0.7 * u4) * (1 + 0.15 * u5), 3.5 + 1.5 * u4)
            )
            b = np.where(
                fibro, 1.4 + 0.8 * u5, np.where(lymph, 2.8 + 0.7 * u4, (3.5 + 1.5 * u4) * (0.6 + 0.3 * u5))
            )
            theta = np.where(fibro, fib_theta + (u6 - 0.5) * 0.7, u6 * math.pi)
            dark = np.where(fibro, 0.95 + 0.35 * u7, np.where(lymph, 1.35 + 0.3 * u7, 0.9 + 0.3 * u7))
            # tumour: large, pleomorphic, hyperchromatic
            ta = 4.5 + 3.0 * u4
            a = np.where(is_tum, ta, a)
            b = np.where(is_tum, ta * (0.65 + 0.35 * u5), b)
            theta = np.where(is_tum, u6 * math.pi, theta)
            dark = np.where(is_tum, 1.15 + 0.6 * u7, dark)
            params = np.stack([cy, cx, a / self.mpp, b / self.mpp, theta, dark])
            groups[False].append(params[:, ~is_tum])
            groups[True].append(params[:, is_tum])
        out = None
        for tum_group, parts in groups.items():
            if not parts:
                continue
            params = np.concatenate(parts, axis=1)
            if params.shape[1] == 0:
                continue
            size = self.stamp_tumour if tum_group else self.stamp_normal
            idx, val = self._stamps(params, size, y0, x0, h, w)
            if idx.size == 0:
                continue
            acc = np.bincount(idx, weights=val, minlength=h * w).astype(np.float32)
            out = acc if out is None else out + acc
        return None if out is None else out.reshape(h, w)

    def _stamps(
        self, params: np.ndarray, size: int, y0: int, x0: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        cy, cx, a, b, theta, dark = params
        off = np.arange(size) - size // 2
        py = np.floor(cy).astype(np.int64)[:, None] + off  # (N, S) pixel rows
        px = np.floor(cx).astype(np.int64)[:, None] + off
        dy = (py + 0.5 - cy[:, None]).astype(np.float32)[:, :, None]
        dx = (px + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]
        cos = np.cos(theta).astype(np.float32)[:, None, None]
        sin = np.sin(theta).astype(np.float32)[:, None, None]
        inv_a = (1.0 / a).astype(np.float32)[:, None, None]
        inv_b = (1.0 / b).astype(np.float32)[:, None, None]
        uu = (dx * cos + dy * sin) * inv_a
        vv = (dy * cos - dx * sin) * inv_b
        r2 = uu * uu + vv * vv
        r = np.sqrt(r2)
        edge = np.clip((1.0 - r) * b.astype(np.float32)[:, None, None] + 0.5, 0.0, 1.0)
        val = edge * (0.8 + 0.3 * r2) * dark.astype(np.float32)[:, None, None]
        ry = (py - y0)[:, :, None]
        rx = (px - x0)[:, None, :]
        ok = (val > 0) & (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
        flat = ry * w + rx
        return flat[ok], val[ok]

    # -- fat -------------------------------------------------------------------------------------

    def _fat(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        c = self.fat_cell
        i_lo, i_hi = math.floor(y0 / c) - 1, math.floor((y0 + h) / c) + 1
        j_lo, j_hi = math.floor(x0 / c) - 1, math.floor((x0 + w) / c) + 1
        ii, jj = np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij")
        u = _cell_uniforms(self.fat_key, ii.ravel(), jj.ravel(), 2)
        py = (ii.ravel() + 0.1 + 0.8 * u[0]) * c
        px = (jj.ravel() + 0.1 + 0.8 * u[1]) * c
        pf = self.layout.sample_points(py, px)
        is_fat = (pf[0] > 0) & (pf[1] <= 0) & (pf[4] > 0)
        if not is_fat.any():
            return None
        shape = ii.shape
        py = py.reshape(shape).astype(np.float32)
        px = px.reshape(shape).astype(np.float32)
        is_fat = is_fat.reshape(shape)
        # a pixel can only be fat (or a fat-cell membrane) if a fat cell is among its 3 x 3 neighbours
        near = ndimage.binary_dilation(is_fat, structure=np.ones((3, 3), bool))
        ys = (y0 + np.arange(h) + 0.5).astype(np.float32)
        xs = (x0 + np.arange(w) + 0.5).astype(np.float32)
        ci = np.floor(ys / c).astype(np.int64) - i_lo
        cj = np.floor(xs / c).astype(np.int64) - j_lo
        rows_near = near[np.unique(ci)].any(axis=0)
        f1 = np.zeros((h, w), bool)
        membrane = np.zeros((h, w), np.float32)
        block = 256
        for b0 in range(0, w, block):
            b1 = min(w, b0 + block)
            if not rows_near[cj[b0] : cj[b1 - 1] + 1].any():
                continue
            fb, mb = self._worley(py, px, is_fat, ci, cj[b0:b1], ys, xs[b0:b1])
            f1[:, b0:b1] = fb
            membrane[:, b0:b1] = mb
        return f1, membrane

    def _worley(
        self,
        py: np.ndarray,
        px: np.ndarray,
        is_fat: np.ndarray,
        ci: np.ndarray,
        cj: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest / second-nearest fat-grid points of a pixel block -> (in a fat cell, membrane)."""
        h, w = ys.size, xs.size
        d1 = np.full((h, w), np.inf, np.float32)
        d2 = np.full((h, w), np.inf, np.float32)
        f1 = np.zeros((h, w), bool)
        f2 = np.zeros((h, w), bool)
        for di in (-1, 0, 1):
            ri = np.clip(ci + di, 0, py.shape[0] - 1)
            py_r, px_r, fat_r = py[ri], px[ri], is_fat[ri]
            for dj in (-1, 0, 1):
                rj = np.clip(cj + dj, 0, py.shape[1] - 1)
                d = np.take(py_r, rj, axis=1)
                d -= ys[:, None]
                d *= d
                dx = np.take(px_r, rj, axis=1)
                dx -= xs[None, :]
                dx *= dx
                d += dx
                fat_here = np.take(fat_r, rj, axis=1)
                closer = d < d1
                second = ~closer & (d < d2)
                f2 = np.where(closer, f1, np.where(second, fat_here, f2))
                f1 = np.where(closer, fat_here, f1)
                np.minimum(d2, np.maximum(d1, d), out=d2)
                np.minimum(d1, d, out=d1)
        np.sqrt(d1, out=d1)
        np.sqrt(d2, out=d2)
        gap = (d2 - d1) * np.float32(0.5)  # ~ distance to the cell wall, px
        thick = np.float32(_FAT_MEMBRANE_UM / self.mpp + 0.5)
        membrane = np.clip(thick - gap, 0.0, 1.0)
        membrane *= f1 | f2
        return f1, membrane


# --------------------------------------------------------------------------------------------------
# Pyramid writing


def _encode(tile: np.ndarray, quality: int) -> bytes:
    return imagecodecs.jpeg8_encode(
        np.ascontiguousarray(tile), level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
    )


def _downsample(img: np.ndarray) -> np.ndarray:
    """4 x 4 box mean of an (h, w, 3) uint8 image (edge-padded to multiples of 4), rounded."""
    h, w = img.shape[:2]
    ph, pw = (-h) % _LEVEL_FACTOR, (-w) % _LEVEL_FACTOR
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    k = _LEVEL_FACTOR
    rows = img[0::k].astype(np.uint16)
    for r in range(1, k):
        rows += img[r::k]
    quads = rows.reshape(rows.shape[0], rows.shape[1] // k, k, 3)
    acc = quads[:, :, 0] + quads[:, :, 1]
    for c in range(2, k):
        acc += quads[:, :, c]
    acc += (k * k) // 2
    acc //= k * k
    return acc.astype(np.uint8)


def _ordered_map(executor: ThreadPoolExecutor, fn: Any, items: list[Any], window: int) -> Iterator[Any]:
    """``executor.map`` with at most ``window`` tasks in flight (bounded memory)."""
    pending: deque[Future[Any]] = deque()
    it = iter(items)
    for item in it:
        pending.append(executor.submit(fn, *item))
        if len(pending) >= window:
            break
    while pending:
        yield pending.popleft().result()
        for item in it:
            pending.append(executor.submit(fn, *item))
            break


def _aperio_description(
    width: int,
    height: int,
    tile: int,
    quality: int,
    mpp: float,
    extra: str = "",
    level_dims: tuple[int, int] | None = None,
) -> str:
    mag = 10.0 / mpp
    geometry = f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if level_dims is not None:
        geometry += f" -> {level_dims[0]}x{level_dims[1]}"
    return (
        f"{_HEADER}\r\n{geometry} JPEG/RGB Q={quality}|AppMag = {mag:g}|MPP = {mpp!r}"
        f"|ScanScope ID = SLIDESCOPE-SYNTH{extra}"
    )


def _label_image(seed: int, has_tumour: bool, size: int = 400) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250, 248))
    draw = ImageDraw.Draw(img)
    lines = ["slidescope", "synthetic H&E", f"seed {seed}", "tumour" if has_tumour else "no tumour"]
    for k, text in enumerate(lines):
        draw.text((24, 24 + 28 * k), text, fill=(20, 20, 20))
    bits = np.unpackbits(np.frombuffer(_scalar_key(seed, 0x1ABE1).tobytes(), np.uint8))
    x = 24
    for bit in bits:
        wdt = 3 if bit else 1
        draw.rectangle([x, 220, x + wdt - 1, 360], fill=(0, 0, 0))
        x += wdt + 2
    return np.asarray(img)


def _macro_image(thumb: np.ndarray, label: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    mh, mw = 431, 1280
    glass = Image.new("RGB", (mw, mh), tuple(int(0.93 * v) for v in background))
    lab = Image.fromarray(label).resize((mh - 40, mh - 40), Image.Resampling.BILINEAR)
    glass.paste(lab, (20, 20))
    area_w, area_h = mw - mh - 40, mh - 40
    th, tw = thumb.shape[:2]
    scale = min(area_w / tw, area_h / th)
    t = Image.fromarray(thumb).resize(
        (max(1, round(tw * scale)), max(1, round(th * scale))), Image.Resampling.LANCZOS
    )
    glass.paste(t, (mh + 20 + (area_w - t.width) // 2, 20 + (area_h - t.height) // 2))
    return np.asarray(glass)


def _thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(1.0, _THUMB_MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return np.ascontiguousarray(img)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.Resampling.LANCZOS))


# --------------------------------------------------------------------------------------------------
# Public entry point


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

    Args:
        path: Output file (``.svs`` or ``.tiff``; the format is the same). Parent folders are created.
        width, height: Level-0 size in pixels.
        mpp: Microns per pixel at level 0 (0.5 is a typical 20x scan, 0.25 a 40x one).
        tumour: Draw one to three tumour regions (8-16 % of the tissue area).
        n_islands: Number of tissue islands (0 gives empty glass; then ``tumour`` must be False).
        tile_size: TIFF tile side in pixels (multiple of 16).
        n_levels: Pyramid levels, each 4x smaller than the one before; ``None`` adds levels while the
            smallest side of the last one is above 1000 px.
        jpeg_quality: JPEG quality (1-100) of the tiles.
        seed: Random seed (>= 0); the same seed and arguments give the same file.
        background: RGB of the empty glass.
        mask_mpp: Microns per pixel of the returned masks and of the layout the slide is drawn from;
            default ``16 * mpp`` (a 40,000 x 30,000 slide gives 2500 x 1875 masks), doubled for
            slides so large that the masks would exceed 8 Mpx. Must be >= ``mpp``.

    Returns:
        A :class:`SyntheticSlide` with the path, size, mpp and the tissue/tumour masks.

    Raises:
        InvalidParameterError: a size, mpp, quality, seed, colour or level count that cannot work.
    """
    width = _check_int("width", width, 1)
    height = _check_int("height", height, 1)
    mpp = _check_positive_float("mpp", mpp)
    n_islands = _check_int("n_islands", n_islands, 0)
    tile_size = _check_int("tile_size", tile_size, 16)
    if tile_size % 16:
        raise InvalidParameterError(
            f"tile_size must be a multiple of 16 (JPEG 4:2:0 blocks), got {tile_size}; 256 or 512 are usual."
        )
    if n_levels is not None:
        n_levels = _check_int("n_levels", n_levels, 1)
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, 1, 100)
    seed = _check_int("seed", seed, 0)
    try:
        bg = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"background must be three integers 0-255 (R, G, B), got {background!r}."
        ) from None
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise InvalidParameterError(f"background must be three integers 0-255 (R, G, B), got {background!r}.")
    if mask_mpp is None:
        mask_mpp = 16.0 * mpp
        while (width / 16.0) * (height / 16.0) * (16.0 * mpp / mask_mpp) ** 2 > _MAX_DEFAULT_MASK_PIXELS:
            mask_mpp *= 2.0  # keep the layout (6 float32 fields at mask size) within ~200 MB
    else:
        mask_mpp = _check_positive_float("mask_mpp", mask_mpp)
        if mask_mpp < mpp:
            raise InvalidParameterError(
                f"mask_mpp ({mask_mpp}) must be >= mpp ({mpp}): the masks are no finer than level 0."
            )
    if tumour and n_islands == 0:
        raise InvalidParameterError(
            "tumour=True needs tissue: use n_islands >= 1, or tumour=False for empty glass."
        )
    dims = _level_dims(width, height, n_levels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0x5CE9E])
    layout = _make_layout(rng, width, height, mpp, mask_mpp, n_islands, bool(tumour))
    tissue_mask = layout.tissue > 0
    tumour_mask = tissue_mask & (layout.tumour > 0)
    has_tumour = bool(tumour_mask.any())
    renderer = _Renderer(layout, seed=seed, mpp=mpp, background=bg)

    _write_pyramid(path, renderer, dims, tile_size, jpeg_quality, mpp, seed, has_tumour, bg, mask_mpp)
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


def _write_pyramid(
    path: Path,
    renderer: _Renderer,
    dims: list[tuple[int, int]],
    tile: int,
    quality: int,
    mpp: float,
    seed: int,
    has_tumour: bool,
    background: tuple[int, int, int],
    mask_mpp: float,
) -> None:
    width, height = dims[0]
    n_ty, n_tx = -(-height // tile), -(-width // tile)
    k = _LEVEL_FACTOR
    # The 4x-reduced image, filled while level 0 streams (padded to whole level-0 tiles). It is level 1
    # of the pyramid, and the source of the thumbnail even for a one-level slide. In memory, or in a
    # temporary file beside the output when large.
    shape1 = (n_ty * tile // k, n_tx * tile // k, 3)
    with contextlib.ExitStack() as stack:
        if math.prod(shape1) > _MEMMAP_THRESHOLD:
            tmpfile = stack.enter_context(
                tempfile.TemporaryFile(dir=path.parent, prefix=".synthetic-", suffix=".raw")
            )
            level1: np.ndarray = np.memmap(tmpfile, dtype=np.uint8, mode="w+", shape=shape1)
        else:
            level1 = np.empty(shape1, np.uint8)
        _write_levels(
            path, renderer, dims, tile, quality, mpp, seed, has_tumour, background, mask_mpp, level1
        )


def _write_levels(
    path: Path,
    renderer: _Renderer,
    dims: list[tuple[int, int]],
    tile: int,
    quality: int,
    mpp: float,
    seed: int,
    has_tumour: bool,
    background: tuple[int, int, int],
    mask_mpp: float,
    level1: np.ndarray,
) -> None:
    width, height = dims[0]
    n_ty, n_tx = -(-height // tile), -(-width // tile)
    group = max(1, _CHUNK_WIDTH // tile)
    k = _LEVEL_FACTOR
    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1))
    bigtiff = width * height * 3 > 2**31

    glass_cache: dict[tuple[int, int, int, int], tuple[list[bytes], np.ndarray]] = {}

    def chunk_task(ty: int, tx0: int, ntiles: int) -> tuple[list[bytes], np.ndarray]:
        y0, x0, w = ty * tile, tx0 * tile, ntiles * tile
        glass = renderer.is_glass(y0, x0, tile, w)
        if glass:  # empty glass repeats with the grain texture: encode each phase once
            hit = glass_cache.get(renderer.glass_key(y0, x0, tile, w))
            if hit is not None:
                return hit
        img = renderer.render(y0, x0, tile, w)
        result = (
            [_encode(img[:, t * tile : (t + 1) * tile], quality) for t in range(ntiles)],
            _downsample(img),
        )
        if glass:
            glass_cache[renderer.glass_key(y0, x0, tile, w)] = result
        return result

    def level0_tiles(executor: ThreadPoolExecutor) -> Iterator[bytes]:
        tasks = [(ty, tx0, min(group, n_tx - tx0)) for ty in range(n_ty) for tx0 in range(0, n_tx, group)]
        results = _ordered_map(executor, chunk_task, tasks, window=2 * workers)
        for (ty, tx0, _), (tiles, small) in zip(tasks, results, strict=True):
            r0, c0 = ty * tile // k, tx0 * tile // k
            level1[r0 : r0 + small.shape[0], c0 : c0 + small.shape[1]] = small
            yield from tiles

    def level_tiles(
        executor: ThreadPoolExecutor, img: np.ndarray, dims_l: tuple[int, int]
    ) -> Iterator[bytes]:
        wl, hl = dims_l
        ny, nx = -(-hl // tile), -(-wl // tile)

        def one(ty: int, tx: int) -> bytes:
            t = img[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile]
            if t.shape[0] < tile or t.shape[1] < tile:
                t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), mode="edge")
            return _encode(t, quality)

        tasks = [(ty, tx) for ty in range(ny) for tx in range(nx)]
        yield from _ordered_map(executor, one, tasks, window=8 * workers)

    extra = f"|Synthetic Seed = {seed}|Synthetic Tumour = {int(has_tumour)}|Synthetic Mask MPP = {mask_mpp!r}"
    common = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "software": _SOFTWARE,
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw, ThreadPoolExecutor(workers) as ex:
        tw.write(
            data=level0_tiles(ex),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=_aperio_description(width, height, tile, quality, mpp, extra),
            resolution=(1e4 / mpp, 1e4 / mpp),
            **common,
        )
        # Lower levels from the 4x-reduced image; keep reducing for the thumbnail if needed.
        reduced = [level1]
        reduced_dims = [(-(-width // k), -(-height // k))]
        while len(reduced) < len(dims) - 1 or max(reduced_dims[-1]) > 4 * _THUMB_MAX_SIDE:
            reduced.append(_downsample(reduced[-1]))
            w_l, h_l = reduced_dims[-1]
            reduced_dims.append((-(-w_l // k), -(-h_l // k)))
        src_w, src_h = reduced_dims[-1]
        thumb_src = np.ascontiguousarray(reduced[-1][:src_h, :src_w])
        thumb = _thumbnail(thumb_src)
        tw.write(
            thumb,
            description=_aperio_description(
                width, height, tile, quality, mpp, level_dims=(thumb.shape[1], thumb.shape[0])
            ),
            rowsperstrip=16,
            **{**common, "compressionargs": {"level": 90}},
            resolution=(1e4 / mpp * thumb.shape[1] / width,) * 2,
        )
        for img, dims_l in zip(reduced, dims[1:], strict=False):
            ds = width / dims_l[0]
            tw.write(
                data=level_tiles(ex, img, dims_l),
                shape=(dims_l[1], dims_l[0], 3),
                dtype=np.uint8,
                tile=(tile, tile),
                description=_aperio_description(width, height, tile, quality, mpp, level_dims=dims_l),
                resolution=(1e4 / (mpp * ds),) * 2,
                **common,
            )
        label = _label_image(seed, has_tumour)
        tw.write(
            label,
            description=f"{_HEADER}\r\nlabel {label.shape[1]}x{label.shape[0]}",
            photometric="rgb",
            compression="lzw",
            metadata=None,
            software=_SOFTWARE,
            subfiletype=1,
            rowsperstrip=64,
        )
        macro = _macro_image(thumb, label, background)
        tw.write(
            macro,
            description=f"{_HEADER}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 90},
            metadata=None,
            software=_SOFTWARE,
            subfiletype=9,
            rowsperstrip=16,
        )


# --------------------------------------------------------------------------------------------------
# IHC-like slide (separate from the H&E renderer above)

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

    Args:
        path: Output ``.tiff`` file; parent folders are created.
        width, height: Level-0 size in pixels (at least 64 each).
        mpp: Microns per pixel at level 0.
        seed: Random seed (>= 0); the same seed and arguments give the same pixels.
        jpeg_quality: JPEG quality of the tiles (1-100).

    Returns:
        A :class:`SyntheticIHCSlide` with the path and the DAB-patch mask.
    """
    from skimage.color import rgb_from_hed

    width = _check_int("width", width, 64)
    height = _check_int("height", height, 64)
    mpp = _check_positive_float("mpp", mpp)
    seed = _check_int("seed", seed, 0)
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, 1, 100)
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
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(256, 256), compression="jpeg",
                     compressionargs={"level": jpeg_quality}, resolution=(res, res), resolutionunit="CENTIMETER")
    return SyntheticIHCSlide(path=path, width=width, height=height, mpp=mpp, dab_mask=c_d > 0,
                             mask_mpp=f * mpp)
