"""Optional stain normalisation of H&E tiles (Macenko, Reinhard), batched in torch.

A normaliser maps the colours of every tile onto a reference stain appearance before the encoder
sees it. It is off by default (foundation models were trained on unnormalised tiles) and switched on
per run with :func:`make_normalizer`::

    >>> norm = make_normalizer("macenko")                  # built-in reference stain
    >>> norm = make_normalizer("reinhard", reference=rgb)  # fitted to a reference tile (H, W, 3) uint8
    >>> tiles = norm(tiles)                                # uint8 (B, H, W, 3) -> uint8 (B, H, W, 3)

Both normalisers take ``uint8`` torch batches ``(B, H, W, 3)`` (on any device) or numpy tiles
``(H, W, 3)`` / ``(B, H, W, 3)``, and return the same type, shape and dtype. Inputs are never modified.

Conventions: optical density ``OD = -log((I + 1) / 256)`` for I in 0..255 (so white 255 is OD 0),
inverted as ``I = 256 exp(-OD) - 1``. *Transparent* pixels have an OD below ``beta = 0.15`` in some
channel (Macenko's criterion): glass, fat vacuoles.

**Tiles with too little tissue** (fewer than ``min_tissue`` = 1 % transparent-free pixels, or a
degenerate stain estimate) are **returned unchanged**: normalising a tile of glass would only amplify
noise. The first time this happens a normaliser logs one warning (``logging``, logger
``slidescope.features.stain``), later occurrences go to the debug log, so a slide with many
background tiles does not flood the log. A *reference* with too little tissue is an error
(:class:`~slidescope.errors.InvalidParameterError`), because nothing sensible can be fitted to it.

Built-in references (used when ``reference`` is None):

* Macenko: the H&E stain matrix and 99th-percentile maximum concentrations from the reference
  implementation of Macenko et al. (2009) widely used in pathology pipelines (``HERef``,
  ``maxCRef`` of schaugf/HEnorm_python, also StainTools/torchstain defaults): haematoxylin
  (0.5626, 0.7201, 0.4062), eosin (0.2159, 0.8012, 0.5581), max concentrations (1.9705, 1.0308).
* Reinhard: CIELAB (D65) target statistics for tissue pixels, round values typical of a well-stained
  H&E section (chosen by hand, not fitted to a data set): mean ``(L, a, b) = (64.0, 24.0, -14.0)``,
  std ``(14.0, 9.0, 7.0)``. Pass ``reference=`` to use your own.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

import numpy as np
import torch

from ..errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LAB_MEAN",
    "DEFAULT_LAB_STD",
    "DEFAULT_MAX_CONCENTRATIONS",
    "DEFAULT_STAIN_MATRIX",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "make_normalizer",
]

#: Reference H&E stain vectors (rows: haematoxylin, eosin; columns: OD of R, G, B), unit norm.
DEFAULT_STAIN_MATRIX = ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581))
#: Reference 99th-percentile concentrations of haematoxylin and eosin.
DEFAULT_MAX_CONCENTRATIONS = (1.9705, 1.0308)
#: Reference CIELAB mean and standard deviation of tissue pixels (Reinhard).
DEFAULT_LAB_MEAN = (64.0, 24.0, -14.0)
DEFAULT_LAB_STD = (14.0, 9.0, 7.0)

BETA = 0.15  # OD below which a channel is transparent
MIN_TISSUE = 0.01  # share of non-transparent pixels below which a tile is left unchanged


class Normalizer(Protocol):
    def __call__(self, tiles: Any) -> Any: ...


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _as_batch(tiles: Any) -> tuple[torch.Tensor, Any]:
    """Any accepted input -> (uint8 (B, H, W, 3) tensor, how to give it back)."""
    if isinstance(tiles, np.ndarray):
        if tiles.dtype != np.uint8 or tiles.ndim not in (3, 4) or tiles.shape[-1] != 3:
            raise InvalidParameterError(
                "stain normalisation takes uint8 RGB (H, W, 3) or (B, H, W, 3), "
                f"got {tiles.dtype} {tiles.shape}."
            )
        batch = torch.from_numpy(np.ascontiguousarray(tiles))
        return (batch[None] if tiles.ndim == 3 else batch), ("numpy", tiles.ndim)
    if isinstance(tiles, torch.Tensor):
        if tiles.dtype != torch.uint8 or tiles.ndim not in (3, 4) or tiles.shape[-1] != 3:
            raise InvalidParameterError(
                "stain normalisation takes uint8 RGB (B, H, W, 3) tensors, "
                f"got {tiles.dtype} {tuple(tiles.shape)}."
            )
        return (tiles[None] if tiles.ndim == 3 else tiles), ("torch", tiles.ndim)
    raise InvalidParameterError(
        f"stain normalisation takes a torch tensor or numpy array, got {type(tiles).__name__}."
    )


def _give_back(batch: torch.Tensor, how: Any) -> Any:
    kind, ndim = how
    out = batch[0] if ndim == 3 else batch
    return out.cpu().numpy() if kind == "numpy" else out


def _od(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> OD float32 (B, N, 3)."""
    return -torch.log((batch.reshape(batch.shape[0], -1, 3).float() + 1.0) / 256.0)


def _to_uint8(od: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    rgb = 256.0 * torch.exp(-od) - 1.0
    return rgb.round_().clamp_(0.0, 255.0).to(torch.uint8).reshape(shape)


def _masked_kth(values: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Nearest-rank quantiles over the last dim of ``values`` (B, ..., N) where ``mask`` (B, 1.., N).

    ``q`` holds one quantile per leading row, broadcast like ``values[..., :1]``. Empty rows give 0.
    """
    v = torch.where(mask, values, torch.full_like(values, float("inf"))).sort(dim=-1).values
    count = mask.sum(dim=-1, keepdim=True).expand(*values.shape[:-1], 1)
    rank = ((count - 1).clamp_min(0).float() * q).round().long()
    out = v.gather(-1, rank)
    return torch.where(count > 0, out, torch.zeros_like(out))[..., 0]


class _Warner:
    """Logs the first fallback of a normaliser as a warning and the later ones at debug level."""

    def __init__(self) -> None:
        self._warned = False

    def __call__(self, name: str, n_skipped: int, n_total: int) -> None:
        if n_skipped == 0:
            return
        msg = (
            "%s: %d of %d tiles have too little tissue (< %.0f %% of pixels with OD >= %.2f in every "
            "channel) "
            "or a degenerate stain estimate; they are returned unchanged."
        )
        level = logging.DEBUG if self._warned else logging.WARNING
        log.log(level, msg, name, n_skipped, n_total, 100 * MIN_TISSUE, BETA)
        self._warned = True


# --------------------------------------------------------------------------------------------------
# Macenko


def _macenko_estimate(
    od: torch.Tensor, *, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile stain matrix (B, 2, 3), 99th-percentile concentrations (B, 2) and validity (B,).

    Macenko et al. (2009): the OD of non-transparent pixels is projected on the plane of the two
    largest eigenvectors of its covariance; the stain vectors are the directions at the ``alpha`` and
    ``100 - alpha`` percentiles of the angle in that plane.
    """
    b, n, _ = od.shape
    mask = (od >= beta).all(dim=-1)  # (B, N)
    cnt = mask.sum(dim=1)
    w = mask.float().unsqueeze(-1)
    mean = (od * w).sum(dim=1) / cnt.clamp_min(1).unsqueeze(-1)  # (B, 3)
    centred = (od - mean[:, None]) * w
    cov = centred.transpose(1, 2) @ centred / (cnt.clamp_min(2) - 1).view(b, 1, 1).float()
    _, vecs = torch.linalg.eigh(cov.double())  # ascending eigenvalues
    plane = vecs[..., 1:].flip(-1).float()  # (B, 3, 2): largest first
    plane = plane * torch.where(plane.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)  # point into positive OD
    proj = od @ plane  # (B, N, 2)
    phi = torch.atan2(proj[..., 1], proj[..., 0])  # (B, N)
    q = torch.tensor([alpha / 100.0, 1.0 - alpha / 100.0], device=od.device).view(1, 2, 1)
    phis = _masked_kth(phi[:, None].expand(b, 2, n), mask[:, None].expand(b, 2, n), q)  # (B, 2)
    vmin = (plane @ torch.stack([phis[:, 0].cos(), phis[:, 0].sin()], dim=-1).unsqueeze(-1))[..., 0]  # (B, 3)
    vmax = (plane @ torch.stack([phis[:, 1].cos(), phis[:, 1].sin()], dim=-1).unsqueeze(-1))[..., 0]
    h_first = (vmin[:, 0] > vmax[:, 0]).unsqueeze(-1)  # haematoxylin absorbs more red
    he = torch.stack([torch.where(h_first, vmin, vmax), torch.where(h_first, vmax, vmin)], dim=1)  # (B, 2, 3)
    he = he / he.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    conc = od @ torch.linalg.pinv(he)  # (B, N, 2): least-squares concentrations
    max_c = torch.kthvalue(conc, max(1, round(0.99 * n)), dim=1).values  # (B, 2)
    valid = (
        (cnt >= max(1, int(MIN_TISSUE * n)))
        & torch.isfinite(he).all(dim=(1, 2))
        & (max_c > 1e-3).all(dim=1)
        & ((he[:, 0] * he[:, 1]).sum(dim=-1) < 0.999)  # two distinct stains
    )
    return he, max_c, valid


class MacenkoNormalizer:
    """Macenko et al. (2009) stain normalisation, batched: every tile gets its own stain estimate.

    Parameters
    ----------
    alpha : percentile (in %) of the angle distribution taken as the extreme stain directions.
    beta : OD below which a channel counts as transparent.

    Call :meth:`fit` with a reference tile, or use the built-in reference (module docstring).
    """

    def __init__(self, *, alpha: float = 1.0, beta: float = BETA) -> None:
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stain_matrix = torch.tensor(DEFAULT_STAIN_MATRIX, dtype=torch.float32)  # (2, 3)
        self.stain_matrix = self.stain_matrix / self.stain_matrix.norm(dim=1, keepdim=True)
        self.max_concentrations = torch.tensor(DEFAULT_MAX_CONCENTRATIONS, dtype=torch.float32)  # (2,)
        self._warn = _Warner()

    def fit(self, reference_rgb: np.ndarray | torch.Tensor) -> MacenkoNormalizer:
        """Take the reference stain matrix and max concentrations from ``reference_rgb`` (H, W, 3) uint8."""
        batch, _ = _as_batch(reference_rgb)
        if batch.shape[0] != 1:
            raise InvalidParameterError("fit() takes one reference tile (H, W, 3), not a batch.")
        he, max_c, valid = _macenko_estimate(_od(batch), alpha=self.alpha, beta=self.beta)
        if not bool(valid[0]):
            raise InvalidParameterError(
                "the Macenko reference has too little H&E tissue to estimate two stains; pick a reference "
                "tile that is mostly stained tissue (nuclei and stroma), or use the built-in reference "
                "(reference=None)."
            )
        self.stain_matrix, self.max_concentrations = he[0].cpu(), max_c[0].cpu()
        return self

    def __call__(self, tiles: Any) -> Any:
        """Normalise uint8 ``(B, H, W, 3)`` tiles (torch or numpy; also one numpy ``(H, W, 3)`` tile)."""
        batch, how = _as_batch(tiles)
        if batch.shape[0] == 0 or batch.shape[1] * batch.shape[2] == 0:
            return _give_back(batch.clone(), how)
        od = _od(batch)
        he, max_c, valid = _macenko_estimate(od, alpha=self.alpha, beta=self.beta)
        conc = od @ torch.linalg.pinv(he)  # (B, N, 2)
        ref_he = self.stain_matrix.to(od.device)
        ref_max = self.max_concentrations.to(od.device)
        conc = conc * (ref_max / max_c.clamp_min(1e-6)).unsqueeze(1)
        out = _to_uint8(conc @ ref_he, batch.shape)
        out = torch.where(valid.view(-1, 1, 1, 1), out, batch)
        self._warn(type(self).__name__, int((~valid).sum()), batch.shape[0])
        return _give_back(out, how)


# --------------------------------------------------------------------------------------------------
# Reinhard (CIELAB, D65)

_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (..., 3) -> CIELAB (..., 3)."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ _RGB2XYZ.to(rgb.device).t() / _WHITE.to(rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    return torch.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1
    )


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (..., 3) -> sRGB in [0, 1] (..., 3), clipped."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = torch.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], dim=-1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _WHITE.to(lab.device)
    lin = (xyz @ torch.linalg.inv(_RGB2XYZ).to(lab.device).t()).clamp(0.0, 1.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055, 12.92 * lin)


def _lab_stats(
    batch: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LAB pixels (B, N, 3), tissue mask (B, N), mean and std over tissue (B, 3)."""
    flat = batch.reshape(batch.shape[0], -1, 3)
    mask = (_od(batch) >= beta).any(dim=-1)  # tissue: some channel absorbs
    lab = _rgb_to_lab(flat.float() / 255.0)
    w = mask.float().unsqueeze(-1)
    cnt = w.sum(dim=1).clamp_min(1.0)
    mean = (lab * w).sum(dim=1) / cnt
    std = (((lab - mean[:, None]) ** 2 * w).sum(dim=1) / cnt).sqrt()
    return lab, mask, mean, std


class ReinhardNormalizer:
    """Reinhard et al. (2001) colour transfer in CIELAB, restricted to tissue pixels.

    Each tile's tissue pixels (some channel with OD >= ``beta``) are shifted and scaled per LAB channel
    to the reference mean and standard deviation; glass and fat stay as they are (near white).
    """

    def __init__(self, *, beta: float = BETA) -> None:
        self.beta = float(beta)
        self.target_mean = torch.tensor(DEFAULT_LAB_MEAN, dtype=torch.float32)
        self.target_std = torch.tensor(DEFAULT_LAB_STD, dtype=torch.float32)
        self._warn = _Warner()

    def fit(self, reference_rgb: np.ndarray | torch.Tensor) -> ReinhardNormalizer:
        """Take the target LAB mean and std from the tissue of ``reference_rgb`` (H, W, 3) uint8."""
        batch, _ = _as_batch(reference_rgb)
        if batch.shape[0] != 1:
            raise InvalidParameterError("fit() takes one reference tile (H, W, 3), not a batch.")
        _, mask, mean, std = _lab_stats(batch, self.beta)
        if int(mask.sum()) < max(1, int(MIN_TISSUE * mask.shape[1])):
            raise InvalidParameterError(
                "the Reinhard reference has too little tissue; pick a reference tile that is mostly stained "
                "tissue, or use the built-in reference (reference=None)."
            )
        self.target_mean, self.target_std = mean[0].cpu(), std[0].cpu()
        return self

    def __call__(self, tiles: Any) -> Any:
        """Normalise uint8 ``(B, H, W, 3)`` tiles (torch or numpy; also one numpy ``(H, W, 3)`` tile)."""
        batch, how = _as_batch(tiles)
        if batch.shape[0] == 0 or batch.shape[1] * batch.shape[2] == 0:
            return _give_back(batch.clone(), how)
        lab, mask, mean, std = _lab_stats(batch, self.beta)
        valid = (mask.sum(dim=1) >= max(1, int(MIN_TISSUE * mask.shape[1]))) & (std > 1e-3).all(dim=1)
        tm, ts = self.target_mean.to(lab.device), self.target_std.to(lab.device)
        new = (lab - mean[:, None]) * (ts / std.clamp_min(1e-3))[:, None] + tm
        rgb = (_lab_to_rgb(new) * 255.0).round_().clamp_(0.0, 255.0).to(torch.uint8).reshape(batch.shape)
        keep = (~mask | ~valid[:, None]).reshape(*batch.shape[:3], 1)
        out = torch.where(keep, batch, rgb)
        self._warn(type(self).__name__, int((~valid).sum()), batch.shape[0])
        return _give_back(out, how)


# --------------------------------------------------------------------------------------------------

_METHODS: dict[str, type[MacenkoNormalizer | ReinhardNormalizer]] = {
    "macenko": MacenkoNormalizer,
    "reinhard": ReinhardNormalizer,
}


def make_normalizer(
    method: Literal["macenko", "reinhard"] | None,
    reference: np.ndarray | torch.Tensor | None = None,
) -> MacenkoNormalizer | ReinhardNormalizer | None:
    """A stain normaliser for a run, or None when ``method`` is None (no normalisation).

    Parameters
    ----------
    method : ``"macenko"``, ``"reinhard"`` or None.
    reference : a reference tile ``(H, W, 3)`` uint8 to fit to; None uses the built-in reference
        (see the module docstring).

    Returns
    -------
    A callable ``uint8 (B, H, W, 3) -> uint8 (B, H, W, 3)`` (torch or numpy), or None.
    """
    if method is None:
        return None
    cls = _METHODS.get(str(method).lower())
    if cls is None:
        raise InvalidParameterError(
            f"unknown stain normalisation {method!r}; use one of {sorted(_METHODS)} "
            "or None (no normalisation)."
        )
    norm = cls()
    return norm.fit(reference) if reference is not None else norm
