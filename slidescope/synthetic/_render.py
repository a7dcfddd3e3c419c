"""Painting level-0 pixels of a synthetic H&E slide from its layout: stroma, tumour, nuclei, fat, glass.

Colours come from a Beer-Lambert model: each pixel has a haematoxylin and an eosin concentration and
``I = background * exp(-(c_H * OD_H + c_E * OD_E))``, with the unit optical densities chosen so that
one unit of eosin over the default background is about (230, 150, 190) and one unit of haematoxylin
about (80, 60, 140). Nuclei and fat cells come from hash-seeded jittered grids in global level-0
coordinates, so they are continuous across chunk borders and independent of the chunking.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._layout import FAT_CELL_UM, Layout
from ._noise import cell_uniforms, fibre_texture, gather, grain_texture, scalar_key

#: Reference background and the colours one unit of each stain gives over it (Beer-Lambert).
_REF_BG = 242.0
_OD_EOSIN = (-np.log(np.array([230.0, 150.0, 190.0]) / _REF_BG)).astype(np.float32)
_OD_HAEM = (-np.log(np.array([80.0, 60.0, 140.0]) / _REF_BG)).astype(np.float32)

# Nuclei: jittered grid of this cell size (um), this many independent layers.
_NUC_CELL_UM = 11.0
_NUC_LAYERS = 2
_NUC_MAX_SEMI_AXIS_NORMAL_UM = 6.0
_NUC_MAX_SEMI_AXIS_TUMOUR_UM = 7.5
_TUMOUR_DENSITY = 0.0065  # nuclei per um^2 (6500 / mm^2)
_STROMA_DENSITY = (0.0010, 0.0016)  # base + D * extra

# Fat: cell membrane thickness (um); the cell size is the layout's FAT_CELL_UM.
_FAT_MEMBRANE_UM = 0.9


class Renderer:
    """Renders any level-0 block of the slide; the same block always gives the same pixels."""

    def __init__(
        self,
        layout: Layout,
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
        self.tex_a = fibre_texture(trng, 1024, mpp, self.theta_a)
        self.tex_b = fibre_texture(trng, 768, mpp, self.theta_b)
        self.grain = grain_texture(trng, 512, mpp)
        self.nuc_cell = _NUC_CELL_UM / mpp
        self.nuc_keys = [scalar_key(seed, 0xC0FFEE, layer) for layer in range(_NUC_LAYERS)]
        self.fat_cell = FAT_CELL_UM / mpp
        self.fat_key = scalar_key(seed, 0xFA7)
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
        grain = gather(self.grain, y0, x0, h, w)
        if self.is_glass(y0, x0, h, w):
            return self._finish(None, None, grain)
        fields = lay.sample_pixels(y0, x0, h, w)
        tissue = fields[0] > 0
        tum = tissue & (fields[1] > 0)
        density = fields[2]
        fa = gather(self.tex_a, y0, x0, h, w)
        fb = gather(self.tex_b, y0, x0, h, w)
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
        """Haematoxylin of the nuclei in the block (h, w), or None if it has none."""
        c = self.nuc_cell
        margin = self.stamp_tumour / 2 + 1
        i_lo, i_hi = math.floor((y0 - margin) / c), math.floor((y0 + h + margin) / c)
        j_lo, j_hi = math.floor((x0 - margin) / c), math.floor((x0 + w + margin) / c)
        gi, gj = np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij")
        ii, jj = gi.ravel(), gj.ravel()
        cell_area_um = _NUC_CELL_UM**2
        groups: dict[bool, list[np.ndarray]] = {False: [], True: []}
        for key in self.nuc_keys:
            u = cell_uniforms(key, ii, jj, 8)
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
            a, b, theta, dark = self._nucleus_shapes(is_tum, orient, [v[keep] for v in u[3:8]])
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

    def _nucleus_shapes(
        self, is_tum: np.ndarray, orient: np.ndarray, u: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Semi-axes (µm), angle and darkness of each nucleus from its five uniforms ``u``."""
        u3, u4, u5, u6, u7 = u
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
        return a, b, theta, dark

    def _stamps(
        self, params: np.ndarray, size: int, y0: int, x0: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel indices in the block and haematoxylin values of ``size``-px elliptical stamps."""
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
        """(pixel in a fat cell, membrane weight [0, 1]) of the block, or None if it has no fat."""
        c = self.fat_cell
        i_lo, i_hi = math.floor(y0 / c) - 1, math.floor((y0 + h) / c) + 1
        j_lo, j_hi = math.floor(x0 / c) - 1, math.floor((x0 + w) / c) + 1
        ii, jj = np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1), indexing="ij")
        u = cell_uniforms(self.fat_key, ii.ravel(), jj.ravel(), 2)
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
