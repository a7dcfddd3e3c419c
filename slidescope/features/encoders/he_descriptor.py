"""``he-descriptor``: a weight-free, deterministic H&E tile descriptor (the default encoder).

This is **not a foundation model** and was never trained on anything. It is a fixed stack of
hand-designed image measurements (colour deconvolution, nuclear blob counts, texture energies) that
needs no weights, no download and no GPU, so every pipeline, test and tutorial runs offline. It carries
real signal for cellularity, nuclear crowding and size, stroma, fat and background, which is enough
for a linear or MIL head on clear-cut problems (on slidescope's synthetic slides a logistic regression
separates tumour from normal tiles perfectly); use a published pathology foundation model (``uni``,
``virchow2``, ``conch``...) when accuracy on real slides matters.

How it works, per tile, batched in torch (CPU or GPU; no Python loop over pixels or tiles):

1. The tile is resized to 224 x 224 (the encoder contract; 112 µm at 0.5 µm/px) and 2 x 2-averaged, so
   the analysis runs on 112 x 112 pixels of 2 x 2 input pixels (1 µm at 0.5 µm/px). Below, "px" means
   *input* pixels. Optical density per RGB channel is ``OD = -log((I + 1) / 256)``, I in 0..255.
2. Colour deconvolution with the Ruifrok & Johnston (2001) H&E-DAB stain matrix (rows normalised):
   haematoxylin (0.65, 0.70, 0.29), eosin (0.07, 0.99, 0.11), DAB (0.27, 0.57, 0.78); the per-pixel
   stain concentrations are ``OD @ pinv(M)``, in OD units of a unit-norm stain vector. The third
   (DAB) channel is kept as a *residual*: on plain H&E it measures how far the stain departs from the
   standard vectors.
3. Masks, with fixed thresholds in OD units: *tissue* is ``max_c OD_c > 0.15`` (Macenko's transparency
   threshold; clean glass is ~0.05); *nuclear* is ``H > 0.6``; *eosin-rich* is ``E > 0.25``; *dense* is
   ``sum_c OD_c > 1.5``; *pale* is ``sum_c OD_c < 0.45``. A non-tissue (bright) pixel is *fat-like*
   when there is tissue within 128 px (64 µm at 0.5 µm/px) in at least three of the four directions
   (measured on 8 x 8 px blocks, a block with any tissue pixel counting as tissue), i.e. it is enclosed
   like an adipocyte vacuole or a lumen; otherwise it is *glass*.
4. Nuclei: the haematoxylin channel is Gaussian-blurred (sigma 3 px) and its local maxima in a 14 x 14
   px window (max-filter comparison) above ``H = 0.4`` are counted as blobs; the same at half that
   resolution (sigma 6 px, 20 x 20 px window) counts large nuclei. Erosions of the nuclear mask by 6 x 6
   and 10 x 10 px squares measure nuclear size and roundness.
5. Texture on H, E and the OD sum: central-difference gradient magnitudes (Sobel-like, per 2 px);
   structure-tensor coherence (fibre alignment); band energies of a 4-level Laplacian pyramid (each a
   difference of two smoothings one octave apart, i.e. a DoG/LoG band); mean absolute differences
   between pixels 2, 4 and 16 px apart (a co-occurrence-like contrast); spread of block statistics over
   an 8 x 8 grid of 28 x 28 px blocks (heterogeneity).

Every raw value ``r`` is then standardised with fixed constants chosen from the physics of the
measurement (typical range of a fraction, of an OD, of a nuclear count per tile), never learned from
data: ``feature = (r - centre) / scale`` (see ``_SPEC``), so values are O(1) on H&E tiles (within
about +-5 even on the very dark nuclei of the synthetic slides). Statistics "in tissue" are taken over
tissue pixels and are 0 (before standardisation) on a tile without tissue. Quantiles and the
"above" fractions use every 4th analysis pixel each way (28 x 28 = 784 samples per tile, nearest rank).
Tiles are processed in chunks of 16 (independent of each other; the chunking only keeps the working
set in the CPU cache).

Feature table (``embed_dim = 98``; :data:`FEATURE_NAMES` holds the names in order):

=======  =====================  =============================================================================
index    name                   meaning
=======  =====================  =============================================================================
0        tissue_frac            fraction of pixels that are tissue (max OD > 0.15)
1        glass_frac             fraction of pixels that are glass / background (bright, not enclosed)
2        fat_frac               fraction of pixels that are fat-like (bright, enclosed by tissue)
3        fat_of_region          fat_frac / (fat_frac + tissue_frac): share of the tissue region in vacuoles
4        dense_frac             fraction of pixels with OD sum > 1.5 (dense staining)
5        nuclear_frac           fraction of pixels with H > 0.6 (nuclear)
6        nuclear_frac_tissue    nuclear pixels / tissue pixels (cellularity)
7        eosin_frac_tissue      eosin-rich (E > 0.25), non-nuclear pixels / tissue pixels (stroma, cytoplasm)
8        edge_frac              share of neighbouring pixel pairs across a tissue border (fragmentation, fat)
9-11     rgb_mean_{r,g,b}       mean R, G, B of the tile in [0, 1]
12-14    rgb_mean_tissue_*      mean R, G, B over tissue pixels
15-17    od_mean_tissue_*       mean OD per RGB channel over tissue pixels
18-20    od_std_tissue_*        standard deviation of OD per RGB channel over tissue pixels
21-23    od_sum_q{10,50,90}     10th, 50th, 90th percentile of the OD sum over tissue pixels
24       lum_std                standard deviation of luminance over the whole tile
25       sat_mean_tissue        mean saturation (max - min) / max of RGB over tissue pixels
26       pale_frac_tissue       share of tissue pixels with OD sum < 0.45 (faint staining)
27-33    h_*                    haematoxylin: h_mean_tissue, h_std_tissue, h_q10, h_q50, h_q90, h_q99 (in
                                tissue), h_mean (over the whole tile)
34-40    e_*                    eosin: the same seven statistics (e_mean_tissue ... e_mean)
41-42    residual_*             DAB / residual channel in tissue: residual_abs_tissue (mean of the absolute
                                value), residual_std_tissue
43       h_share                sum H+ / (sum H+ + sum E+) over tissue (positive parts): purple vs pink
44-47    h_above_*              share of tissue pixels with H above 0.25, 0.5, 1.0, 1.5
48-50    e_above_*              share of tissue pixels with E above 0.15, 0.3, 0.6
51       blobs_small            nuclear blobs (sigma 3 px, 14 px window) per 10^4 px of tile
52       blobs_large            large nuclear blobs (sigma 6 px, 20 px window) per 10^4 px of tile
53       blobs_per_tissue       small blobs per 10^4 tissue px (tissue area floored at 10 % of the tile)
54       blob_peak_h            mean blurred H at the small blobs (hyperchromasia)
55       blob_dark_frac         share of small blobs whose blurred H > 1.0
56       blob_radius            sqrt(nuclear px / small blobs / pi), px: equivalent nuclear radius
57       nuc_h_mean             mean H over nuclear pixels (chromatin density)
58       nuc_h_std              std of H over nuclear pixels (chromatin texture)
59       nuc_core3              share of nuclear pixels surviving a 6 x 6 px erosion (large, round nuclei)
60       nuc_core5              share of nuclear pixels surviving a 10 x 10 px erosion (very large nuclei)
61       crowding               mean number of other small blobs in the same 56 x 56 px block as a blob
62       nuc_block_max          highest nuclear fraction among the 8 x 8 blocks (hot spot)
63       nuc_block_std          std of the nuclear fraction over the 8 x 8 blocks
64       nuc_perimeter          share of nuclear pixels on the nuclear boundary (small/elongated: high)
65-67    grad_h_*               gradient magnitude of H: mean, std, share of pixels above 0.25 OD/px (edge)
68-70    grad_e_*               gradient magnitude of E: mean, std, share above 0.1 OD/px
71-73    grad_od_*              gradient magnitude of the OD sum: mean, std, share above 0.25 OD/px
74       coherence_e            structure-tensor coherence of E over the tile (global fibre alignment)
75       coherence_h            structure-tensor coherence of H over the tile
76       coherence_e_local      mean coherence of E over ~26 x 26 px blocks (local fibre alignment)
77-80    lap_h_{1..4}           mean |Laplacian-pyramid band| of H at scales 2-4, 4-8, 8-16, 16-32 px
81-84    lap_e_{1..4}           the same for E
85-88    lap_od_{1..4}          the same for the OD sum
89-91    contrast_h_{2,4,16}    mean |H(p) - H(p + d)|, d = 2, 4, 16 px (horizontal and vertical averaged)
92-94    contrast_e_{2,4,16}    the same for E
95-97    block_std_*            std over the 8 x 8 blocks of: tissue fraction, mean H, mean E
=======  =====================  =============================================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ...errors import InvalidParameterError
from ._base import Encoder, EncoderConfig

__all__ = ["FEATURE_NAMES", "RGB_FROM_HED", "HEDescriptor", "describe_he"]

#: Ruifrok & Johnston (2001) H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB; columns: R, G, B).
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

INPUT_SIZE = 224
TISSUE_OD = 0.15  # max-channel OD above which a pixel is tissue (Macenko's beta)
NUCLEAR_H = 0.6  # haematoxylin concentration (OD units) above which a pixel is nuclear
EOSIN_E = 0.25  # eosin concentration above which a pixel is eosin-rich
DENSE_OD = 1.5  # OD sum above which staining is dense
PALE_OD = 0.45  # OD sum below which tissue is faint
BLOB_H = 0.4  # blurred H a local maximum must exceed to count as a nucleus
FAT_REACH = 16  # px at 1/8 resolution (128 input px) in which tissue must lie in each direction
CHUNK = 16  # tiles per pass: keeps the working set in cache on CPUs
GRAD_EDGE_H, GRAD_EDGE_E, GRAD_EDGE_OD = 0.25, 0.1, 0.25  # 'strong edge' gradient thresholds (OD / px)

# (name, centre, scale): feature = (raw - centre) / scale. Constants come from the measurement's
# physical range (fractions 0..1, OD 0..~3, ~0..25 nuclei per 10^4 px), not from data.
_SPEC: tuple[tuple[str, float, float], ...] = (
    ("tissue_frac", 0.5, 0.5),
    ("glass_frac", 0.5, 0.5),
    ("fat_frac", 0.1, 0.2),
    ("fat_of_region", 0.1, 0.2),
    ("dense_frac", 0.1, 0.2),
    ("nuclear_frac", 0.1, 0.2),
    ("nuclear_frac_tissue", 0.15, 0.2),
    ("eosin_frac_tissue", 0.5, 0.5),
    ("edge_frac", 0.02, 0.04),
    ("rgb_mean_r", 0.8, 0.2),
    ("rgb_mean_g", 0.7, 0.25),
    ("rgb_mean_b", 0.8, 0.2),
    ("rgb_mean_tissue_r", 0.7, 0.3),
    ("rgb_mean_tissue_g", 0.5, 0.3),
    ("rgb_mean_tissue_b", 0.7, 0.3),
    ("od_mean_tissue_r", 0.4, 0.4),
    ("od_mean_tissue_g", 0.7, 0.5),
    ("od_mean_tissue_b", 0.35, 0.3),
    ("od_std_tissue_r", 0.3, 0.4),
    ("od_std_tissue_g", 0.4, 0.5),
    ("od_std_tissue_b", 0.2, 0.25),
    ("od_sum_q10", 0.8, 0.8),
    ("od_sum_q50", 1.2, 1.0),
    ("od_sum_q90", 1.5, 2.0),
    ("lum_std", 0.1, 0.1),
    ("sat_mean_tissue", 0.3, 0.3),
    ("pale_frac_tissue", 0.1, 0.2),
    ("h_mean_tissue", 0.4, 0.5),
    ("h_std_tissue", 0.4, 0.5),
    ("h_q10", 0.0, 0.3),
    ("h_q50", 0.2, 0.3),
    ("h_q90", 0.8, 1.0),
    ("h_q99", 1.5, 1.5),
    ("h_mean", 0.3, 0.4),
    ("e_mean_tissue", 0.35, 0.3),
    ("e_std_tissue", 0.15, 0.15),
    ("e_q10", 0.2, 0.3),
    ("e_q50", 0.35, 0.3),
    ("e_q90", 0.5, 0.4),
    ("e_q99", 0.7, 0.5),
    ("e_mean", 0.2, 0.3),
    ("residual_abs_tissue", 0.2, 0.2),
    ("residual_std_tissue", 0.1, 0.1),
    ("h_share", 0.4, 0.3),
    ("h_above_0.25", 0.3, 0.3),
    ("h_above_0.5", 0.2, 0.2),
    ("h_above_1.0", 0.1, 0.15),
    ("h_above_1.5", 0.05, 0.15),
    ("e_above_0.15", 0.6, 0.4),
    ("e_above_0.3", 0.4, 0.4),
    ("e_above_0.6", 0.1, 0.2),
    ("blobs_small", 5.0, 5.0),
    ("blobs_large", 3.0, 3.0),
    ("blobs_per_tissue", 5.0, 5.0),
    ("blob_peak_h", 1.0, 1.0),
    ("blob_dark_frac", 0.3, 0.4),
    ("blob_radius", 5.0, 5.0),
    ("nuc_h_mean", 1.5, 1.0),
    ("nuc_h_std", 0.5, 0.5),
    ("nuc_core3", 0.4, 0.4),
    ("nuc_core5", 0.2, 0.3),
    ("crowding", 1.0, 2.0),
    ("nuc_block_max", 0.4, 0.4),
    ("nuc_block_std", 0.1, 0.15),
    ("nuc_perimeter", 0.6, 0.3),
    ("grad_h_mean", 0.1, 0.2),
    ("grad_h_std", 0.2, 0.3),
    ("grad_h_edge", 0.1, 0.2),
    ("grad_e_mean", 0.04, 0.06),
    ("grad_e_std", 0.06, 0.1),
    ("grad_e_edge", 0.1, 0.2),
    ("grad_od_mean", 0.2, 0.3),
    ("grad_od_std", 0.3, 0.4),
    ("grad_od_edge", 0.1, 0.2),
    ("coherence_e", 0.2, 0.3),
    ("coherence_h", 0.15, 0.2),
    ("coherence_e_local", 0.4, 0.3),
    ("lap_h_1", 0.05, 0.1),
    ("lap_h_2", 0.05, 0.1),
    ("lap_h_3", 0.05, 0.1),
    ("lap_h_4", 0.05, 0.1),
    ("lap_e_1", 0.02, 0.04),
    ("lap_e_2", 0.02, 0.04),
    ("lap_e_3", 0.02, 0.04),
    ("lap_e_4", 0.02, 0.04),
    ("lap_od_1", 0.1, 0.2),
    ("lap_od_2", 0.1, 0.2),
    ("lap_od_3", 0.1, 0.2),
    ("lap_od_4", 0.1, 0.2),
    ("contrast_h_2", 0.1, 0.2),
    ("contrast_h_4", 0.15, 0.2),
    ("contrast_h_16", 0.25, 0.3),
    ("contrast_e_2", 0.03, 0.05),
    ("contrast_e_4", 0.05, 0.05),
    ("contrast_e_16", 0.07, 0.07),
    ("block_std_tissue", 0.15, 0.2),
    ("block_std_h", 0.2, 0.3),
    ("block_std_e", 0.05, 0.1),
)

#: Names of the descriptor's features, in order (see the module docstring for their meaning).
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _SPEC)
EMBED_DIM = len(FEATURE_NAMES)


# --------------------------------------------------------------------------------------------------
# Small batched image operations on (B, C, H, W) float32


def _gaussian_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n, n) matrix ``G`` with ``G @ v`` = Gaussian blur of ``v`` (length n) with reflect borders."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    g = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for off, w in zip(range(-radius, radius + 1), k, strict=True):
            j = i + off
            j = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)  # reflect (no edge repeat)
            g[i, min(max(j, 0), n - 1)] += w
    return torch.from_numpy(g.astype(np.float32)).to(device)


_GAUSS_CACHE: dict[tuple[int, float, str], torch.Tensor] = {}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of square maps ``(B, C, n, n)`` as two matrix products (fast on CPU and GPU)."""
    n = x.shape[-1]
    key = (n, sigma, str(x.device))
    g = _GAUSS_CACHE.get(key)
    if g is None:
        g = _GAUSS_CACHE[key] = _gaussian_matrix(n, sigma, x.device)
    return g @ x @ g.t()


def _max_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k max filter (odd k, same size; outside the map is ignored) as shifted maxima, both axes.

    Shifted ``torch.maximum`` calls are several times faster than ``max_pool2d`` with stride 1 on CPU.
    """
    r = k // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), value=float("-inf"))
    out = p[..., :, 0:w]
    for i in range(1, k):
        out = torch.maximum(out, p[..., :, i : i + w])
    p = F.pad(out, (0, 0, r, r), value=float("-inf"))
    out = p[..., 0:h, :]
    for i in range(1, k):
        out = torch.maximum(out, p[..., i : i + h, :])
    return out


def _erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary erosion by a k x k square (outside the tile counts as set)."""
    return -_max_filter(-mask, k)


def _enclosed(mask: torch.Tensor, reach: int) -> torch.Tensor:
    """1 where ``mask`` has a set pixel within ``reach`` px in at least 3 of the 4 directions (left, right,
    up, down; outside the map counts as unset, so vacuoles cut by the tile border still count)."""
    h, w = mask.shape[-2:]
    left = F.max_pool2d(F.pad(mask, (reach, 0, 0, 0)), (1, reach), stride=1)[..., :w]
    right = F.max_pool2d(F.pad(mask, (0, reach, 0, 0)), (1, reach), stride=1)[..., 1 : w + 1]
    up = F.max_pool2d(F.pad(mask, (0, 0, reach, 0)), (reach, 1), stride=1)[..., :h, :]
    down = F.max_pool2d(F.pad(mask, (0, 0, 0, reach)), (reach, 1), stride=1)[..., 1 : h + 1, :]
    return ((left + right + up + down) >= 3.0).float()


def _sorted_samples(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted values of maps ``x`` (B, C, H, W) at ``m`` (B, 1, H, W) pixels, every 4th pixel each way.

    Returns ``(values (B, C, K), count (B, 1, 1))``; masked-out samples sort last as +inf.
    """
    xs = x[..., ::4, ::4].flatten(2)
    ms = m[..., ::4, ::4].flatten(2) > 0.5
    xs = torch.where(ms, xs, torch.full_like(xs, float("inf")))
    return xs.sort(dim=-1).values, ms.sum(dim=-1, keepdim=True)


def _quantiles(values: torch.Tensor, count: torch.Tensor, q: tuple[float, ...]) -> torch.Tensor:
    """Nearest-rank quantiles from :func:`_sorted_samples`: (B, C, len(q)); 0 where nothing was sampled."""
    qs = torch.tensor(q, device=values.device, dtype=torch.float32)
    rank = ((count - 1).clamp_min(0).float() * qs).round().long().expand(-1, values.shape[1], -1)
    out = values.gather(-1, rank)
    return torch.where(count > 0, out, torch.zeros_like(out))


def _fraction_above(values: torch.Tensor, count: torch.Tensor, thresholds: tuple[float, ...]) -> torch.Tensor:
    """Share of sampled values above each threshold: (B, C, len(thresholds)); 0 where none sampled."""
    t = torch.tensor(thresholds, device=values.device, dtype=values.dtype)
    t = t.expand(*values.shape[:2], -1).contiguous()
    at_most = torch.searchsorted(values.contiguous(), t, right=True)
    return (count - at_most).clamp_min(0).float() / count.clamp_min(1).float()


def _coherence(jxx: torch.Tensor, jyy: torch.Tensor, jxy: torch.Tensor) -> torch.Tensor:
    """Structure-tensor coherence sqrt((Jxx - Jyy)^2 + 4 Jxy^2) / (Jxx + Jyy), elementwise."""
    return ((jxx - jyy) ** 2 + 4.0 * jxy**2).sqrt() / (jxx + jyy).clamp_min(1e-6)


def _laplacian_energies(x: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Mean |level - upsampled(2x-reduced level)| per channel over a 2x pyramid (B, C, levels).

    Each band is a difference of two smoothings one octave apart (a Laplacian-pyramid / DoG band).
    """
    out = []
    for _ in range(levels):
        b, c, h, w = x.shape
        small = F.avg_pool2d(x, 2)
        band = x.view(b, c, h // 2, 2, w // 2, 2) - small[:, :, :, None, :, None]
        out.append(band.abs().mean(dim=(2, 3, 4, 5)))
        x = small
    return torch.stack(out, dim=-1)


def _contrast(x: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """Mean |x(p) - x(p + d)|, horizontal and vertical averaged: (B, C, H, W) -> (B, C, len(shifts))."""
    out = []
    for d in shifts:
        dh = (x[..., :, d:] - x[..., :, :-d]).abs().mean(dim=(-2, -1))
        dv = (x[..., d:, :] - x[..., :-d, :]).abs().mean(dim=(-2, -1))
        out.append(0.5 * (dh + dv))
    return torch.stack(out, dim=-1)


# --------------------------------------------------------------------------------------------------
# The descriptor


def _hed_from_rgb() -> torch.Tensor:
    m = np.asarray(RGB_FROM_HED, dtype=np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return torch.from_numpy(np.linalg.pinv(m).astype(np.float32))  # OD (.., 3) @ this -> (H, E, D)


_HED_FROM_RGB = _hed_from_rgb()


def describe_he(x: torch.Tensor) -> torch.Tensor:
    """Raw (unstandardised) H&E features of RGB tiles.

    Parameters
    ----------
    x : float ``(B, 3, S, S)`` RGB in [0, 1], ``S`` divisible by 32 (224 in the encoder). The analysis
        runs on 2x2-averaged pixels (``S / 2`` a side).

    Returns
    -------
    float32 ``(B, len(FEATURE_NAMES))``, in the order of :data:`FEATURE_NAMES`, before the fixed
    ``(raw - centre) / scale`` standardisation :class:`HEDescriptor` applies.
    """
    return _describe_half(F.avg_pool2d(x.float().clamp(0.0, 1.0), 2))


def _describe_half(x: torch.Tensor) -> torch.Tensor:
    """:func:`describe_he` on 2x2-averaged RGB ``(B, 3, n, n)`` in [0, 1]: pixel maps, then the stain,
    nuclei and texture groups of the feature table (each step adds its features to ``f``)."""
    m = _pixel_maps(x)
    f: dict[str, torch.Tensor] = {}
    _stain_features(f, x, m)
    _nuclei_features(f, m)
    _texture_features(f, m)
    missing = [k for k in FEATURE_NAMES if k not in f]
    if missing or len(f) != EMBED_DIM:  # pragma: no cover - guards the table against drift
        raise RuntimeError(f"he-descriptor feature table out of sync: missing {missing}, got {len(f)}")
    return torch.stack([f[k] for k in FEATURE_NAMES], dim=1)


def _std(mean: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    return (sq - mean * mean).clamp_min(0.0).sqrt()


def _pixel_maps(x: torch.Tensor) -> dict[str, Any]:
    """Per-pixel stain maps and their plain, in-tissue and in-nuclei means (one matrix product)."""
    b, _, n, _ = x.shape
    npx = n * n
    dev = x.device
    od = -torch.log(x * (255.0 / 256.0) + 1.0 / 256.0)  # -log((I + 1) / 256), I in 0..255
    hed = (_HED_FROM_RGB.to(dev).t() @ od.flatten(2)).view(b, 3, n, n)
    h, e, res = hed[:, 0:1], hed[:, 1:2], hed[:, 2:3]
    od_sum = od.sum(dim=1, keepdim=True)

    tissue = (od.amax(dim=1, keepdim=True) > TISSUE_OD).float()
    nuclear = (h > NUCLEAR_H).float()
    bright8 = 1.0 - F.avg_pool2d(tissue, 4)  # (B, 1, n/4, n/4): share of non-tissue pixels, 8x8 input px
    fat8 = bright8 * _enclosed(F.max_pool2d(tissue, 4), FAT_REACH)  # blocks with any tissue enclose
    mx, mn = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)

    # one matrix product gives the plain, in-tissue and in-nuclei sums of every per-pixel map
    maps = torch.cat(
        [
            x,
            od,
            od * od,
            od_sum,
            (mx - mn) / mx.clamp_min(1e-3),
            hed,
            hed * hed,
            res.abs(),
            h.clamp_min(0.0),
            e.clamp_min(0.0),
            (e > EOSIN_E).float() * (1.0 - nuclear),
            (od_sum > DENSE_OD).float(),
            nuclear,
            tissue,
        ],
        dim=1,
    )  # (B, 24, n, n)
    weights = torch.cat([torch.ones_like(tissue), tissue, nuclear], dim=1).flatten(2).transpose(1, 2)
    sums = maps.flatten(2) @ weights  # (B, 24, 3)
    n_t = sums[:, 23, 0:1]
    n_nuc = sums[:, 22, 0:1]
    all_mean = sums[..., 0] / npx
    t_mean = sums[..., 1] / n_t.clamp_min(1.0)
    nuc_mean = sums[..., 2] / n_nuc.clamp_min(1.0)
    idx = {
        "rgb": slice(0, 3),
        "od": slice(3, 6),
        "od2": slice(6, 9),
        "od_sum": 9,
        "sat": 10,
        "hed": slice(11, 14),
        "hed2": slice(14, 17),
        "res_abs": 17,
        "h_pos": 18,
        "e_pos": 19,
        "eosin": 20,
        "dense": 21,
        "nuclear": 22,
    }

    return {
        "n": n,
        "npx": npx,
        "dev": dev,
        "od": od,
        "h": h,
        "e": e,
        "od_sum": od_sum,
        "tissue": tissue,
        "nuclear": nuclear,
        "fat8": fat8,
        "n_t": n_t,
        "n_nuc": n_nuc,
        "all_mean": all_mean,
        "t_mean": t_mean,
        "nuc_mean": nuc_mean,
        "idx": idx,
    }


def _stain_features(f: dict[str, torch.Tensor], x: torch.Tensor, m: dict[str, Any]) -> None:
    """Tissue, fat and glass fractions; colour, optical density and H/E statistics."""
    npx, n_t, all_mean, t_mean, idx = m["npx"], m["n_t"], m["all_mean"], m["t_mean"], m["idx"]
    tissue, od_sum, h, e = m["tissue"], m["od_sum"], m["h"], m["e"]
    frac_t = n_t[:, 0] / npx
    fat = m["fat8"].mean(dim=(1, 2, 3))
    f["tissue_frac"] = frac_t
    f["fat_frac"] = fat
    f["glass_frac"] = (1.0 - frac_t - fat).clamp_min(0.0)
    f["fat_of_region"] = fat / (fat + frac_t).clamp_min(1e-6)
    f["dense_frac"] = all_mean[:, idx["dense"]]
    f["nuclear_frac"] = all_mean[:, idx["nuclear"]]
    f["nuclear_frac_tissue"] = t_mean[:, idx["nuclear"]]
    f["eosin_frac_tissue"] = t_mean[:, idx["eosin"]]
    f["edge_frac"] = _contrast(tissue, (1,))[:, 0, 0]  # share of neighbour pairs across a tissue border
    for i, c in enumerate("rgb"):
        f[f"rgb_mean_{c}"] = all_mean[:, i]
        f[f"rgb_mean_tissue_{c}"] = t_mean[:, i]
    od_m, od_s = t_mean[:, idx["od"]], _std(t_mean[:, idx["od"]], t_mean[:, idx["od2"]])
    for i, c in enumerate("rgb"):
        f[f"od_mean_tissue_{c}"] = od_m[:, i]
        f[f"od_std_tissue_{c}"] = od_s[:, i]
    samples, count = _sorted_samples(torch.cat([od_sum, h, e], dim=1), tissue)
    q = _quantiles(samples, count, (0.1, 0.5, 0.9, 0.99))  # (B, 3, 4): OD sum, H, E
    above = _fraction_above(samples, count, (PALE_OD, 0.25, 0.5, 1.0, 1.5))  # (B, 3, 5)
    for i, p in enumerate((10, 50, 90)):
        f[f"od_sum_q{p}"] = q[:, 0, i]
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    f["lum_std"] = lum.flatten(1).std(dim=1, correction=0)
    f["sat_mean_tissue"] = t_mean[:, idx["sat"]]
    f["pale_frac_tissue"] = torch.where(count[:, 0, 0] > 0, 1.0 - above[:, 0, 0], 0.0)
    hed_m, hed_s = t_mean[:, idx["hed"]], _std(t_mean[:, idx["hed"]], t_mean[:, idx["hed2"]])
    for i, s in enumerate("he"):
        f[f"{s}_mean_tissue"] = hed_m[:, i]
        f[f"{s}_std_tissue"] = hed_s[:, i]
        for j, p in enumerate((10, 50, 90, 99)):
            f[f"{s}_q{p}"] = q[:, 1 + i, j]
        f[f"{s}_mean"] = all_mean[:, idx["hed"]][:, i]
    f["residual_abs_tissue"] = t_mean[:, idx["res_abs"]]
    f["residual_std_tissue"] = hed_s[:, 2]
    hp, ep = t_mean[:, idx["h_pos"]], t_mean[:, idx["e_pos"]]
    f["h_share"] = hp / (hp + ep).clamp_min(1e-6)
    for j, t in enumerate(("0.25", "0.5", "1.0", "1.5")):
        f[f"h_above_{t}"] = above[:, 1, 1 + j]
    e_above = _fraction_above(samples[:, 2:3], count, (0.15, 0.3, 0.6))[:, 0]
    for j, t in enumerate(("0.15", "0.3", "0.6")):
        f[f"e_above_{t}"] = e_above[:, j]

    m["samples"], m["count"] = samples, count


def _nuclei_features(f: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    """Nuclei as local maxima of the blurred haematoxylin: counts, sizes, darkness, crowding."""
    n, npx, h, e, tissue, nuclear = m["n"], m["npx"], m["h"], m["e"], m["tissue"], m["nuclear"]
    n_t, n_nuc, nuc_mean, idx = m["n_t"], m["n_nuc"], m["nuc_mean"], m["idx"]
    # local maxima of the blurred haematoxylin (sigma 1.5 px here = 3 input px; and at half that
    # resolution for large nuclei)
    per_10k = 1e4 / (4.0 * npx)  # per 10^4 input pixels
    hs = _blur(h, 1.5)
    peaks = ((hs == _max_filter(hs, 7)) & (hs > BLOB_H)).float()
    h4 = _blur(F.avg_pool2d(h, 2), 1.5)
    peaks4 = ((h4 == _max_filter(h4, 5)) & (h4 > BLOB_H)).float()
    n_small = peaks.sum(dim=(1, 2, 3))
    f["blobs_small"] = n_small * per_10k
    f["blobs_large"] = peaks4.sum(dim=(1, 2, 3)) * per_10k
    f["blobs_per_tissue"] = n_small * 1e4 / (4.0 * n_t[:, 0]).clamp_min(0.4 * npx)  # area floored at 10 %
    pk = (
        torch.cat([hs * peaks, (hs > 1.0).float() * peaks], dim=1).sum(dim=(2, 3))
        / n_small.clamp_min(1.0)[:, None]
    )
    f["blob_peak_h"], f["blob_dark_frac"] = pk[:, 0], pk[:, 1]
    f["blob_radius"] = (4.0 * n_nuc[:, 0] / n_small.clamp_min(1.0) / math.pi).sqrt()  # input px
    f["nuc_h_mean"] = nuc_mean[:, idx["hed"]][:, 0]
    f["nuc_h_std"] = _std(nuc_mean[:, idx["hed"]][:, 0], nuc_mean[:, idx["hed2"]][:, 0])
    core3 = _erode(nuclear, 3)
    core5 = _erode(core3, 3)
    denom = n_nuc[:, 0].clamp_min(1.0)
    f["nuc_core3"] = core3.sum(dim=(1, 2, 3)) / denom
    f["nuc_core5"] = core5.sum(dim=(1, 2, 3)) / denom
    f["nuc_perimeter"] = (n_nuc[:, 0] - core3.sum(dim=(1, 2, 3))) / denom
    bl = n // 8  # 8 x 8 blocks
    per_block = F.avg_pool2d(torch.cat([peaks, nuclear, tissue, h, e], dim=1), bl).flatten(2)  # (B, 5, 64)
    cnt = F.avg_pool2d(peaks, n // 4).flatten(1) * (n // 4) ** 2  # blobs per 56 x 56 input-px block
    f["crowding"] = (cnt * (cnt - 1.0)).sum(dim=1) / n_small.clamp_min(1.0)
    f["nuc_block_max"] = per_block[:, 1].amax(dim=1)
    f["nuc_block_std"] = per_block[:, 1].std(dim=1, correction=0)

    m["per_block"] = per_block


def _texture_features(f: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    """Texture: central differences of H, E and the OD sum, coherence, Laplacian energies, contrast."""
    n, dev, h, e, od_sum, per_block = m["n"], m["dev"], m["h"], m["e"], m["od_sum"], m["per_block"]
    bl = n // 8
    ch = torch.cat([h, e, od_sum], dim=1)
    gx = 0.5 * (ch[..., 1:-1, 2:] - ch[..., 1:-1, :-2])
    gy = 0.5 * (ch[..., 2:, 1:-1] - ch[..., :-2, 1:-1])
    mag = (gx * gx + gy * gy).sqrt()
    thr = torch.tensor([GRAD_EDGE_H, GRAD_EDGE_E, GRAD_EDGE_OD], device=dev).view(1, 3, 1, 1)
    g_mean, g_std = mag.mean(dim=(2, 3)), mag.flatten(2).std(dim=2, correction=0)
    g_edge = (mag > thr).float().mean(dim=(2, 3))
    for i, s in enumerate(("h", "e", "od")):
        f[f"grad_{s}_mean"], f[f"grad_{s}_std"], f[f"grad_{s}_edge"] = g_mean[:, i], g_std[:, i], g_edge[:, i]
    jt = torch.cat([gx[:, :2] ** 2, gy[:, :2] ** 2, gx[:, :2] * gy[:, :2]], dim=1)  # (B, 6, n-2, n-2)
    jg = jt.mean(dim=(2, 3))
    coh = _coherence(jg[:, 0:2], jg[:, 2:4], jg[:, 4:6])
    f["coherence_h"], f["coherence_e"] = coh[:, 0], coh[:, 1]
    jb = F.avg_pool2d(jt[:, 1::2], bl - 1)  # E only: (B, 3, ~8, ~8)
    f["coherence_e_local"] = _coherence(jb[:, 0], jb[:, 1], jb[:, 2]).flatten(1).mean(dim=1)
    lap = _laplacian_energies(ch)  # (B, 3, 4)
    for i, s in enumerate(("h", "e", "od")):
        for j in range(4):
            f[f"lap_{s}_{j + 1}"] = lap[:, i, j]
    con = _contrast(ch[:, :2], (1, 2, 8))  # 2, 4, 16 input px
    for i, s in enumerate(("h", "e")):
        for j, d in enumerate((2, 4, 16)):
            f[f"contrast_{s}_{d}"] = con[:, i, j]
    bstd = per_block[:, 2:].std(dim=2, correction=0)
    f["block_std_tissue"], f["block_std_h"], f["block_std_e"] = bstd[:, 0], bstd[:, 1], bstd[:, 2]


class HEDescriptor(Encoder):
    """The weight-free H&E descriptor as an :class:`Encoder` (see the module docstring).

    ``forward(uint8 (B, H, W, 3)) -> float32 (B, 98)``. It has no parameters; the standardisation
    constants are non-persistent buffers, so its ``state_dict`` is empty.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        if config.embed_dim != EMBED_DIM:
            raise InvalidParameterError(
                f"he-descriptor has {EMBED_DIM} features, config says embed_dim={config.embed_dim}"
            )
        centre = torch.tensor([c for _, c, _ in _SPEC], dtype=torch.float32)
        scale = torch.tensor([s for _, _, s in _SPEC], dtype=torch.float32)
        self.register_buffer("_centre", centre, persistent=False)
        self.register_buffer("_scale", scale, persistent=False)

    def _standardise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self._centre) / self._scale

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``float (B, 3, 224, 224)`` RGB in [0, 1] (mean 0 / std 1: :meth:`preprocess` leaves it as is)."""
        if x.shape[0] == 0:
            return torch.zeros(0, EMBED_DIM, device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            half = F.avg_pool2d(x.float().clamp(0.0, 1.0), 2)
            return self._standardise(torch.cat([_describe_half(c) for c in half.split(CHUNK)]))

    @torch.no_grad()
    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """``uint8 (B, H, W, 3)`` tiles (or float ``(B, 3, H, W)`` in [0, 1]) -> ``float32 (B, 98)``.

        Tiles already at the input size skip the full-resolution float copy: their 2x2 means are taken
        straight from the uint8 bytes, chunk by chunk (same features as ``embed(preprocess(tiles))`` up
        to float rounding).
        """
        size = self.config.input_size
        if tiles.dtype != torch.uint8 or tuple(tiles.shape[1:]) != (size, size, 3):
            return self.embed(self.preprocess(tiles))
        b, n = tiles.shape[0], size // 2
        if b == 0:
            return torch.zeros(0, EMBED_DIM, device=tiles.device)
        with torch.autocast(device_type=tiles.device.type, enabled=False):
            out = []
            for chunk in tiles.split(CHUNK):
                v = chunk.view(-1, n, 2, n, 2, 3).float()
                half = (v[:, :, 0, :, 0] + v[:, :, 0, :, 1] + v[:, :, 1, :, 0] + v[:, :, 1, :, 1]).mul_(
                    1.0 / 1020.0
                )
                out.append(_describe_half(half.permute(0, 3, 1, 2)))
            return self._standardise(torch.cat(out))
