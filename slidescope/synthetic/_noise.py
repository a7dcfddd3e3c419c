"""Randomness the H&E generator draws from: per-cell hash numbers, smooth layout noise, periodic textures.

* Hash-based uniforms (splitmix64) give every cell of a global level-0 grid its own numbers, so nuclei and
  fat cells do not depend on how the slide is cut into render chunks.
* :class:`NoiseSampler` is smooth Gaussian-like noise in microns (a cubic B-spline of a random lattice,
  evaluated with sparse matrices) at the mask pixel centres: the raw material of the layout.
* The fibre and grain textures are periodic tiles (FFT-filtered noise) read with wrap-around.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, sparse

# splitmix64 constants
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_PRIME_J = np.uint64(0xC2B2AE3D27D4EB4F)
_U64_MASK = (1 << 64) - 1


# --------------------------------------------------------------------------------------------------
# Hash-based per-cell random numbers (deterministic in global coordinates)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


def scalar_key(*parts: int) -> np.uint64:
    """A 64-bit key hashed from integers (a seed and a purpose tag)."""
    z = 0x2545F4914F6CDD1D
    for p in parts:
        z = (z ^ (int(p) & _U64_MASK)) * 0x9E3779B97F4A7C15 & _U64_MASK
        z ^= z >> 29
    return np.uint64(z)


def cell_uniforms(key: np.uint64, i: np.ndarray, j: np.ndarray, count: int) -> list[np.ndarray]:
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


class NoiseSampler:
    """Smooth Gaussian-ish noise in physical coordinates, sampled at the mask pixel centres."""

    def __init__(
        self, rng: np.random.Generator, ys_um: np.ndarray, xs_um: np.ndarray, extent_um: tuple[float, float]
    ):
        self.rng = rng
        self.ys_um = ys_um
        self.xs_um = xs_um
        self.extent_um = extent_um

    def noise(self, spacing_um: float) -> np.ndarray:
        """One layer of unit-variance noise with features about ``spacing_um`` apart (at least 20 µm)."""
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
        """Sum of :meth:`noise` layers (amplitudes ``amps``, default halving), rescaled to unit variance."""
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
# Periodic textures (fibres, grain)


def _filtered_noise(rng: np.random.Generator, size: int, filt: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((size, size))
    out = np.fft.ifft2(np.fft.fft2(noise) * filt).real
    return out / (out.std() or 1.0)


def fibre_texture(rng: np.random.Generator, size: int, mpp: float, theta: float) -> np.ndarray:
    """Periodic ``(size, size)`` wavy collagen fibres along angle ``theta``, values in [0, 1]."""
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


def grain_texture(rng: np.random.Generator, size: int, mpp: float) -> np.ndarray:
    """Periodic ``(size, size)`` fine unit-variance grain (scanner noise and stain granularity)."""
    k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    sigma = max(0.35 / mpp, 0.5)
    return _filtered_noise(rng, size, np.exp(-2 * math.pi**2 * sigma**2 * k2)).astype(np.float32)


def gather(tex: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """The ``(h, w)`` window at level-0 ``(y0, x0)`` of a periodic texture (wrapping around)."""
    p0, p1 = tex.shape
    r = y0 % p0
    block = tex[r : r + h] if r + h <= p0 else np.take(tex, (y0 + np.arange(h)) % p0, axis=0)
    c = x0 % p1
    if c + w <= p1:
        return np.ascontiguousarray(block[:, c : c + w])
    return np.take(block, (x0 + np.arange(w)) % p1, axis=1)
