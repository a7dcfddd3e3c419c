"""The layout of a synthetic H&E slide: low-resolution fields that say where tissue, tumour and fat are.

One value per mask pixel (``mask_mpp`` µm/px): tissue islands are warped ellipses with ragged borders,
tumour is one to three warped blobs deep inside the tissue, fat patches lie in the normal tissue, and
three smooth fields modulate stroma density, fibre orientation and tumour nest density. The returned
masks are these fields thresholded; the renderer samples the same fields bilinearly at every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._noise import NoiseSampler

#: fat: adipocytes on a jittered grid of this cell size (µm); the renderer draws them
FAT_CELL_UM = 55.0


class Layout:
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
        """Rows and columns of the padded fields that a level-0 block's bilinear samples touch."""
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


@dataclass(frozen=True)
class _Canvas:
    """The mask-resolution grid the fields are drawn on: pixel centres in µm and a noise source."""

    mask_mpp: float
    h_um: float
    w_um: float
    ys_um: np.ndarray  # (rows,) pixel-centre y
    xs_um: np.ndarray  # (cols,)
    y_col: np.ndarray  # float32 (rows, 1)
    x_row: np.ndarray  # float32 (1, cols)
    noise: NoiseSampler

    @property
    def cols(self) -> int:
        return self.xs_um.size


def make_layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    mask_mpp: float,
    n_islands: int,
    tumour: bool,
) -> Layout:
    """Draw the layout fields at mask resolution (float32, a handful of full-size temporaries)."""
    f = mask_mpp / mpp
    mh = max(1, math.ceil(height / f - 1e-9))
    mw = max(1, math.ceil(width / f - 1e-9))
    h_um, w_um = height * mpp, width * mpp
    ys_um = (np.arange(mh) + 0.5) * mask_mpp
    xs_um = (np.arange(mw) + 0.5) * mask_mpp
    canvas = _Canvas(
        mask_mpp=mask_mpp,
        h_um=h_um,
        w_um=w_um,
        ys_um=ys_um,
        xs_um=xs_um,
        y_col=ys_um.astype(np.float32)[:, None],
        x_row=xs_um.astype(np.float32)[None, :],
        noise=NoiseSampler(rng, ys_um, xs_um, (h_um, w_um)),
    )
    fields = np.empty((6, mh, mw), np.float32)
    coverage = rng.uniform(0.30, 0.50)
    mean_r = _draw_islands(fields[Layout.TISSUE], canvas, rng, n_islands, coverage)
    tissue_m = fields[Layout.TISSUE] > 0
    tumour_f = fields[Layout.TUMOUR]
    tumour_f.fill(-1.0)
    if tumour and tissue_m.any():
        _draw_tumour(tumour_f, canvas, rng, tissue_m, n_islands)
    tumour_m = tissue_m & (tumour_f > 0)
    fields[Layout.FAT] = _fat_field(canvas, rng, tissue_m & ~tumour_m, mean_r)
    del tissue_m, tumour_m
    _draw_modulations(fields, canvas.noise)
    return Layout(f, fields)


def _ellipse_field(
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


def _warped_coords(canvas: _Canvas, radius: float, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre y and x (µm) displaced by smooth noise of ``strength * radius`` µm."""
    warp_y = canvas.noise.fbm([radius, radius / 3])
    warp_y *= np.float32(strength * radius)
    warp_y += canvas.y_col
    warp_x = canvas.noise.fbm([radius, radius / 3])
    warp_x *= np.float32(strength * radius)
    warp_x += canvas.x_row
    return warp_y, warp_x


def _draw_islands(
    tissue_f: np.ndarray, canvas: _Canvas, rng: np.random.Generator, n_islands: int, coverage: float
) -> float:
    """Fill the tissue field: warped ellipses on a loose grid plus border detail; return the mean radius."""
    h_um, w_um = canvas.h_um, canvas.w_um
    if n_islands <= 0:
        tissue_f.fill(-1.0)
        return 0.25 * min(h_um, w_um)
    rows_g = max(1, round(math.sqrt(n_islands * h_um / w_um)))
    cols_g = math.ceil(n_islands / rows_g)
    rows_g = math.ceil(n_islands / cols_g)
    cell_h, cell_w = h_um / rows_g, w_um / cols_g
    cells = rng.permutation(rows_g * cols_g)[:n_islands]
    scale = min(1.15, math.sqrt(coverage * rows_g * cols_g / (0.636 * n_islands)))
    mean_r = 0.45 * scale * math.sqrt(cell_h * cell_w)
    warp_y, warp_x = _warped_coords(canvas, mean_r, 0.18)
    tissue_f.fill(-np.inf)
    for cell in cells:
        r, c = divmod(int(cell), cols_g)
        cy = (r + 0.5 + rng.uniform(-0.08, 0.08)) * cell_h
        cx = (c + 0.5 + rng.uniform(-0.08, 0.08)) * cell_w
        ry = 0.45 * scale * cell_h * rng.uniform(0.8, 1.0)
        rx = 0.45 * scale * cell_w * rng.uniform(0.8, 1.0)
        theta = rng.uniform(-0.35, 0.35)
        _ellipse_field(tissue_f, warp_y, warp_x, cy, cx, ry, rx, theta)
    del warp_y, warp_x
    detail = canvas.noise.fbm([mean_r / 4, mean_r / 10, 40.0], [1.0, 0.6, 0.35])
    detail *= np.float32(0.10)
    tissue_f += detail
    del detail
    tissue_f -= _edge_penalty(canvas)  # keep clear of the glass edges
    tissue_f -= np.float32(np.quantile(tissue_f, 1.0 - coverage))
    return mean_r


def _edge_penalty(canvas: _Canvas) -> np.ndarray:
    """0 in the middle of the glass, rising to 3 at the edges over a 4 % margin."""
    margin = 0.04 * min(canvas.h_um, canvas.w_um)
    edge_y = np.minimum(canvas.y_col, np.float32(canvas.h_um) - canvas.y_col)
    edge_x = np.minimum(canvas.x_row, np.float32(canvas.w_um) - canvas.x_row)
    edge = np.minimum(edge_y, edge_x)
    edge *= np.float32(-1.0 / margin)
    edge += np.float32(1)
    np.clip(edge, 0, 1, out=edge)
    edge *= np.float32(3)
    return edge


def _draw_tumour(
    tumour_f: np.ndarray, canvas: _Canvas, rng: np.random.Generator, tissue_m: np.ndarray, n_islands: int
) -> None:
    """Fill the tumour field: one to three warped blobs deep in the tissue, 8-16 % of its area."""
    frac = rng.uniform(0.08, 0.16)
    k = int(rng.integers(1, min(3, n_islands) + 1))
    score = ndimage.distance_transform_edt(np.pad(tissue_m, 1))[1:-1, 1:-1].astype(np.float32)
    tissue_area = tissue_m.sum() * canvas.mask_mpp**2
    r_blob = math.sqrt(frac * tissue_area / (k * math.pi))
    warp_y, warp_x = _warped_coords(canvas, r_blob, 0.25)
    tumour_f.fill(-np.inf)
    for _ in range(k):
        if score.max() <= 0:
            break
        cand = np.flatnonzero(score >= 0.7 * score.max())
        idx = int(cand[rng.integers(cand.size)])
        ci, cj = divmod(idx, canvas.cols)
        cy, cx = canvas.ys_um[ci], canvas.xs_um[cj]
        ry = r_blob * rng.uniform(0.8, 1.2)
        rx = r_blob * rng.uniform(0.8, 1.2)
        _ellipse_field(tumour_f, warp_y, warp_x, cy, cx, ry, rx, 0.0)
        # the next blob goes elsewhere: damp the score within 3 radii of this one
        away = np.hypot(canvas.y_col - np.float32(cy), canvas.x_row - np.float32(cx))
        away *= np.float32(1.0 / (3.0 * r_blob))
        np.minimum(away, 1, out=away)
        score *= away
        del away
    del warp_y, warp_x, score
    detail = canvas.noise.fbm([r_blob / 2, r_blob / 5, 40.0], [1.0, 0.6, 0.3])
    detail *= np.float32(0.12)
    tumour_f += detail
    del detail
    tumour_f -= np.float32(np.quantile(tumour_f[tissue_m], 1.0 - frac))
    # tumour only inside tissue: make that explicit in the field too
    np.minimum(tumour_f, np.where(tissue_m, np.float32(np.inf), np.float32(-1e-3)), out=tumour_f)


def _fat_field(canvas: _Canvas, rng: np.random.Generator, normal: np.ndarray, mean_r: float) -> np.ndarray:
    """Fat patches covering 6-15 % of the ``normal`` (non-tumour) tissue (> 0 is fat)."""
    fat = canvas.noise.fbm([max(4 * FAT_CELL_UM, mean_r / 3), 3 * FAT_CELL_UM])
    if normal.any():
        fat -= np.float32(np.quantile(fat[normal], 1.0 - rng.uniform(0.06, 0.15)))
    else:
        fat.fill(-1.0)
    return fat


def _draw_modulations(fields: np.ndarray, noise: NoiseSampler) -> None:
    """Stroma density, fibre orientation weight and tumour nest density: smooth fields in [0, 1]."""
    for index, spacings, gain in (
        (Layout.DENSITY, [500.0, 150.0], 1.0),
        (Layout.ORIENT, [300.0, 120.0], 1.5),
        (Layout.NEST, [40.0], 1.5),
    ):
        g = noise.fbm(spacings)
        g *= np.float32(gain)
        np.tanh(g, out=g)
        g *= np.float32(0.5)
        g += np.float32(0.5)
        fields[index] = g
        del g
