"""TransMIL (Shao et al., NeurIPS 2021): Nystrom-attention transformer with the PPEG position encoder.

Nystrom attention (Xiong et al., AAAI 2021) is implemented here in plain torch, following the
computation of the ``nystrom_attention`` package the reference uses (sum-pooled landmarks, iterative
Moore-Penrose pseudo-inverse, residual depth-wise convolution over the value sequence).

Landmark schemes (``landmarks=``; see :class:`NystromAttention`): ``"exact"`` (default) averages each
landmark over real tokens only; ``"reference"`` reproduces lucidrains' ``nystrom-attention`` >= 0.0.10
(front zero padding to a multiple of the landmark count, the zeros count in the landmark means, the
softmaxes and as all-zero landmarks), as used by szc19990412/TransMIL with a current install;
``"reference-0.0.9"`` also reproduces the version TransMIL's ``requirements.txt`` pins, whose output
keeps the *first* ``n`` rows of the padded sequence (misaligned by the padding; fixed upstream in
0.0.10, commit d7eb229). Both reference modes are checked against those packages by golden files
(tests/golden/make_transmil.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...errors import InvalidParameterError
from ._base import Aggregator, AggregatorOutput, embed_mlp, masked_softmax
from ._registry import register_aggregator
from .abmil import _load_reference

__all__ = ["TransMIL", "NystromAttention", "PPEG"]


def _iterative_pinv(x: Tensor, iters: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of softmax matrices by Newton-Schulz-type iterations.

    Parameters
    ----------
    x : Tensor of shape (..., M, M)
    iters : int

    Notes
    -----
    The initial scale uses the largest row and column sums over the whole tensor, as the reference does;
    TransMIL here always calls it on one bag at a time, so bags never influence each other.
    """
    abs_x = x.abs()
    col, row = abs_x.sum(-1), abs_x.sum(-2)
    z = x.transpose(-1, -2) / (col.max() * row.max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def _softmax_matmul(q: Tensor, k: Tensor, v: Tensor, step: int, zero_keys: int = 0) -> Tensor:
    """``softmax(q @ k^T, dim=-1) @ v`` over ``k``/``v`` in chunks of ``step`` rows (online softmax).

    Parameters
    ----------
    q : Tensor of shape (B, h, m, d)
    k, v : Tensor of shape (B, h, n, d)
    step : int
    zero_keys : int
        Number of extra all-zero key/value rows (the reference's alignment padding): each adds a logit 0
        to the softmax and nothing to the values.

    Returns
    -------
    Tensor of shape (B, h, m, d); equal to the direct formula up to float rounding.
    """
    top = total = acc = None
    for j in range(0, k.shape[2], step):
        s = q @ k[:, :, j : j + step].transpose(-1, -2)  # (B, h, m, c)
        high = s.amax(-1, keepdim=True)
        if top is not None:
            high = torch.maximum(top, high)
        p = (s - high).exp_()
        part_sum, part = p.sum(-1, keepdim=True), p @ v[:, :, j : j + step]
        if top is None:
            total, acc = part_sum, part
        else:
            fix = (top - high).exp_()
            total, acc = total * fix + part_sum, acc * fix + part
        top = high
    if zero_keys:  # logits 0, values 0: only the normaliser grows
        high = top.clamp_min(0.0)
        fix = (top - high).exp_()
        total, acc = total * fix + zero_keys * (-high).exp_(), acc * fix
    return acc / total


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention over one unpadded sequence (B = 1 in TransMIL).

    Parameters
    ----------
    dim : int
        Token width.
    heads, dim_head : int
        Number of heads and width of each (TransMIL: 8 x dim // 8).
    num_landmarks : int
        Maximum number of landmarks ``m`` (TransMIL: dim // 2).
    pinv_iterations : int
        Iterations of the pseudo-inverse (6).
    residual_kernel : int
        Length of the depth-wise residual convolution over the value sequence (33); 0 disables it.
    dropout : float
        Dropout on the output projection (0.1).
    landmarks : {"exact", "reference", "reference-0.0.9"}
        How the alignment padding enters (see Notes). ``"exact"`` (default) ignores it; the two reference
        modes reproduce lucidrains' ``nystrom-attention`` called without a mask, as TransMIL calls it.

    Notes
    -----
    As in the reference, the sequence of ``n`` tokens is split into ``m`` consecutive groups of
    ``l = ceil(n / m)`` tokens (``p = m * l - n`` zeros are prepended to reach ``m * l``) and each landmark
    is the mean of a group.

    - ``"exact"``: groups made only of alignment zeros are dropped and a partial group is averaged over
      its real tokens, so the result does not depend on where the sequence length falls relative to a
      multiple of ``m``. For ``n <= m`` every token is its own landmark.
    - ``"reference"`` (``nystrom-attention`` >= 0.0.10): the ``p`` zero tokens (zero queries, keys and
      values, as the QKV projection has no bias) are part of the sequence: every landmark is a group sum
      divided by ``l``, all-zero groups are zero landmarks, and the ``p`` zero keys enter the landmark-to-
      token softmax; the output keeps the last ``n`` rows, the real tokens.
    - ``"reference-0.0.9"``: as ``"reference"``, but the output keeps the *first* ``n`` rows of the padded
      sequence, as version 0.0.9 (pinned in TransMIL's requirements.txt) does: for ``p > 0`` output row
      ``i`` is the attention output of padded position ``i``, i.e. a zero query for ``i < p`` and real token
      ``i - p`` after; the residual convolution is shifted the same way.

    When ``n`` is a multiple of ``m`` all three coincide exactly. (The reference's own masked path is
    none of these: its masked landmark rows still enter the pseudo-inverse.) Every mode is computed in
    chunks (no ``n x m`` matrix is ever whole) and never materialises the padded sequence, except the
    value sequence for the residual convolution in ``"reference-0.0.9"``.
    """

    #: accepted values of ``landmarks``
    LANDMARK_MODES = ("exact", "reference", "reference-0.0.9")

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
        landmarks: str = "exact",
    ) -> None:
        super().__init__()
        if landmarks not in self.LANDMARK_MODES:
            raise InvalidParameterError(
                f"landmarks must be one of {', '.join(self.LANDMARK_MODES)}, got {landmarks!r}; use "
                "'reference' for weights trained with szc19990412/TransMIL and a current nystrom-attention"
            )
        self.landmarks = landmarks
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        #: size of the chunks the attention is computed in (bounds the working set; see ``forward``)
        self.chunk_bytes = 16 << 20
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv: nn.Conv2d | None = None
        if residual_kernel > 0:  # depth-wise over the sequence axis, one filter per head
            kernel, pad = (residual_kernel, 1), (residual_kernel // 2, 0)
            self.res_conv = nn.Conv2d(heads, heads, kernel, padding=pad, groups=heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention.

        Parameters
        ----------
        x : Tensor of shape (B, n, dim)
            Real tokens only (no padding).

        Returns
        -------
        Tensor of shape (B, n, dim)
        """
        b, n, _ = x.shape
        qkv = self.to_qkv(x).reshape(b, n, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, n, d) each
        q = q * self.scale
        m = self.num_landmarks
        size = math.ceil(n / m)  # tokens per landmark
        pad = m * size - n
        exact = self.landmarks == "exact"
        # the groups the reference forms on the front-padded sequence; "exact" keeps those with a real token
        counts = torch.full((m,), size, device=x.device)
        counts[: pad // size] = 0
        counts[pad // size] -= pad % size
        keep = counts > 0

        group = torch.div(torch.arange(n, device=x.device) + pad, size, rounding_mode="floor")

        def landmarks(t: Tensor) -> Tensor:  # group sums without materialising the padded sequence
            sums = t.new_zeros(b, self.heads, m, self.dim_head).index_add_(2, group, t)
            if exact and pad:
                return (sums / counts[:, None].to(t.dtype))[:, :, keep]
            return sums / size  # reference: the padded zeros count in every mean, zero groups stay

        q_land, k_land = landmarks(q), landmarks(k)
        attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (B, h, m', m')
        # (attn1 @ pinv(attn2)) @ (attn3 @ v), re-associated as attn1 @ W with W = pinv(attn2) @ (attn3 @ v)
        # (m' x d). attn3 @ v is accumulated over column chunks with a running max (online softmax) and
        # attn1 = softmax(q k_land^T) is built in row chunks: the same numbers, but no (m' x n) or (n x m')
        # matrix is ever whole (at 100k tiles each would be ~0.8 GB, and fresh memory that large costs
        # page faults on every call; chunks of <= 16 MB are recycled by the allocator).
        step = max(64, self.chunk_bytes // (b * self.heads * q_land.shape[2] * q.element_size()))
        zero_keys = 0 if exact else pad  # the reference's padded zero keys enter the softmax of attn3
        w = _iterative_pinv(attn2, self.pinv_iterations) @ _softmax_matmul(q_land, k, v, step, zero_keys)
        out = q.new_empty(b, n, self.heads, self.dim_head)
        for i in range(0, n, step):
            rows = torch.softmax(q[:, :, i : i + step] @ k_land.transpose(-1, -2), dim=-1) @ w  # (B, h, c, d)
            out[:, i : i + step] = rows.transpose(1, 2)
        if self.landmarks == "reference-0.0.9" and pad:
            # the first n rows of the padded sequence: p zero queries (uniform attention over the
            # landmarks, i.e. the mean row of w), then the first n - p real tokens
            zero_row = w.mean(2).unsqueeze(1).expand(b, min(pad, n), self.heads, self.dim_head)
            out = torch.cat([zero_row, out[:, : max(n - pad, 0)]], dim=1)
            if self.res_conv is not None:
                v_padded = torch.cat([v.new_zeros(b, self.heads, pad, self.dim_head), v], dim=2)
                out = out + self.res_conv(v_padded)[:, :, :n].transpose(1, 2)
        elif self.res_conv is not None:
            # zero-padded at the front or not, the convolution of the last n rows is the same
            out = out + self.res_conv(v).transpose(1, 2)
        return self.to_out(out.reshape(b, n, self.heads * self.dim_head))


class PPEG(nn.Module):
    """Pyramid position encoding generator: ``x + DWConv7(x) + DWConv5(x) + DWConv3(x)`` on the token grid.

    Parameters
    ----------
    dim : int
        Token width (number of depth-wise channels).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        """
        Parameters
        ----------
        x : Tensor of shape (B, 1 + side**2, dim)
            CLS token first, then the square grid of patch tokens in row-major order.
        side : int

        Returns
        -------
        Tensor of the same shape.
        """
        b, _, c = x.shape
        cls, grid = x[:, :1], x[:, 1:].transpose(1, 2).reshape(b, c, side, side)
        out = self.proj7(grid)  # in-place sums: no extra full-size temporaries on 100k-tile grids
        out += self.proj5(grid)
        out += self.proj3(grid)
        out += grid
        grid = out
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class _TransLayer(nn.Module):
    """Pre-norm residual Nystrom attention: ``x + NystromAttention(LayerNorm(x))``."""

    def __init__(self, dim: int, heads: int, pinv_iterations: int, dropout: float, landmarks: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim,
            heads=heads,
            dim_head=dim // heads,
            num_landmarks=dim // 2,
            pinv_iterations=pinv_iterations,
            residual_kernel=33,
            dropout=dropout,
            landmarks=landmarks,
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))


@register_aggregator("transmil")
class TransMIL(Aggregator):
    """TransMIL: ``Linear+ReLU, square pad, [CLS], TransLayer, PPEG, TransLayer, LN, CLS -> Linear``.

    Parameters
    ----------
    in_dim, num_classes : int
        Tile embedding length ``D`` and number of classes ``C``.
    embed_dim : int
        Transformer width (512).
    heads : int
        Attention heads (8, head width ``embed_dim // heads``; MIL-Lab defaults to 4).
    pinv_iterations : int
        Pseudo-inverse iterations (6). Landmarks: ``embed_dim // 2`` (256).
    attn_dropout : float
        Dropout on the attention output projections (0.1).
    dropout : float
        Dropout after the input embedding (0, as the original; MIL-Lab uses 0.25).
    landmarks : {"exact", "reference", "reference-0.0.9"}
        Nystrom landmark scheme (see :class:`NystromAttention`). ``"exact"`` (default; existing checkpoints
        were trained with it) averages landmarks over real tokens only. ``"reference"`` gives the
        reference's numbers with ``nystrom-attention`` >= 0.0.10 (landmarks over the front zero padding to
        a multiple of ``embed_dim // 2``; TransMIL's sequence length ``1 + ceil(sqrt(n))**2`` almost never
        is one, so the two differ by ~1e-3..5e-2 in the logits); ``"reference-0.0.9"`` that with the
        version pinned in TransMIL's requirements.txt. Use a reference mode with
        :meth:`load_reference_state_dict` to run weights trained with the reference code.

    Notes
    -----
    Reference: szc19990412/TransMIL ``models/TransMIL.py`` (commit 9d6aee5) with lucidrains'
    ``nystrom-attention`` (0.0.14, fbe9eba; and 0.0.9, e3c4aa5). Parity with the same weights, both
    reference modes: max |logit difference| <= 1e-6 in float32 (measured 2.1e-7; ``"exact"``: 8e-3 and
    6e-2 on the same two bags; tests/mil/test_parity_transmil.py).
    Deviations: the reference hard-codes ``in_dim=1024, embed_dim=512`` and runs one bag per call; its
    square padding ``h[:, :add_length]`` is short when ``add_length > n`` (bags of 1, 2, 3, 5, 7 tiles...),
    here the first tokens repeat cyclically; the default ``landmarks="exact"`` (above).

    Masking: square padding (repeating the first ``M - n`` tokens up to ``M = ceil(sqrt(n))**2``), the
    Nystrom landmarks and the PPEG grid all depend on the bag length, so each bag's real tokens are run
    through the transformer **separately** (a Python loop over the batch). This is exact: a padded batch
    gives the same result as each bag alone.

    ``scores`` (attention kind): TransMIL has no native tile weights. As in the MIL-Lab port, the tile
    score is the dot product between the CLS token and each patch token after the first layer (before
    PPEG); here it is scaled by ``1 / sqrt(embed_dim)`` and softmax-normalised over the real tiles (the
    first ``n`` tokens, not their square-padding copies). Treat it as a saliency proxy.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 512,
        heads: int = 8,
        pinv_iterations: int = 6,
        attn_dropout: float = 0.1,
        dropout: float = 0.0,
        landmarks: str = "exact",
    ) -> None:
        super().__init__(in_dim, num_classes)
        if embed_dim % heads or embed_dim < 2:
            raise InvalidParameterError(f"embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        self.embed = embed_mlp(in_dim, embed_dim, dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.layer1 = _TransLayer(embed_dim, heads, pinv_iterations, attn_dropout, landmarks)
        self.ppeg = PPEG(embed_dim)
        self.layer2 = _TransLayer(embed_dim, heads, pinv_iterations, attn_dropout, landmarks)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    #: reference (szc19990412/TransMIL) parameter-name prefixes -> ours
    REFERENCE_KEYS: ClassVar[dict[str, str]] = {
        "_fc1.0.": "embed.0.",
        "pos_layer.proj.": "ppeg.proj7.",
        "pos_layer.proj1.": "ppeg.proj5.",
        "pos_layer.proj2.": "ppeg.proj3.",
        "_fc2.": "classifier.",
    }

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the ``state_dict`` of the reference ``TransMIL`` (szc19990412/TransMIL).

        Keys are renamed (``_fc1.0`` -> ``embed.0``, ``pos_layer.proj/proj1/proj2`` -> ``ppeg.proj7/5/3``,
        ``_fc2`` -> ``classifier``; ``cls_token``, ``layer{1,2}.*`` and ``norm`` are shared) and loaded
        strictly. Build the model with ``landmarks="reference"`` (or ``"reference-0.0.9"`` for the pinned
        nystrom-attention) to reproduce the reference's outputs; a Lightning checkpoint of the reference
        stores the same keys under ``model.``: strip that prefix first.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            As returned by the reference model's ``state_dict()``.
        """
        _load_reference(self, state_dict, self.REFERENCE_KEYS)

    def _forward_bag(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """One bag: (1, n, E) embedded real tiles -> ((1, C) logits, (n,) CLS-similarity logits)."""
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:  # repeat the first tokens (cyclically when n is tiny and extra > n)
            h = torch.cat([h, h[:, torch.arange(extra, device=h.device) % n]], dim=1)
        x = torch.cat([self.cls_token.to(h.dtype), h], dim=1)
        x = self.layer1(x)
        sim = (x[:, 1 : n + 1] @ x[:, 0].unsqueeze(-1)).squeeze(-1)[0] / math.sqrt(x.shape[-1])
        x = self.ppeg(x, side)
        x = self.layer2(x)
        return self.classifier(self.norm(x)[:, 0]), sim

    def _forward(self, features: Tensor, mask: Tensor, labels: Tensor | None) -> AggregatorOutput:
        h = self.embed(features)  # (B, N, E)
        logits, sims = [], []
        for b in range(h.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            logit, sim = self._forward_bag(h[b, valid].unsqueeze(0))
            logits.append(logit)
            sims.append(sim.new_zeros(mask.shape[1]).index_put((valid,), sim))
        return AggregatorOutput(logits=torch.cat(logits), scores=masked_softmax(torch.stack(sims), mask))
