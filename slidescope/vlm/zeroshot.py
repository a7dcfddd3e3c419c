"""Zero-shot slide classification from embeddings: prompt building, ensembling, MI-Zero, prompt spread.

Pure functions on tensors (see ``docs/REFERENCE-models.md`` §1.4, §3.2, §3.3):

* :func:`build_prompts` expands class phrasings x templates into prompts and a prompt -> class index;
* :func:`zero_shot_logits` scores slides against the prompts, ensembling either the CONCH/TITAN way
  (``"mean-embedding"``: average each class's normalised prompt embeddings) or the PRISM way
  (``"sum-probability"``: softmax over all prompts, then sum each class's probabilities);
* :func:`mi_zero` pools tile-text similarities per class by top-k mean (CONCH's ``run_mizero``) or top-k sum
  (MI-Zero's ``topj_pooling``);
* :func:`prompt_spread` re-scores with random subsets of each class's prompts, to show prompt fragility.

``logit_scale`` is always the *multiplier* of cosine similarities (CLIP's ``logit_scale.exp()``: 100 in CLIP
code, ``exp(temperature)`` for PRISM), never its logarithm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import metrics as _metrics
from ..errors import InvalidParameterError

__all__ = [
    "DEFAULT_TEMPLATES",
    "build_prompts",
    "zero_shot_logits",
    "class_text_embeddings",
    "mi_zero",
    "MiZeroResult",
    "MiZeroPooling",
    "prompt_spread",
    "PromptSpread",
    "auroc",
]

Ensemble = Literal["mean-embedding", "sum-probability"]
MiZeroPooling = Literal["mean", "sum"]

DEFAULT_TEMPLATES = (
    "{}.",
    "an H&E image of {}.",
    "a histopathological image of {}.",
    "an H&E stained image of {}.",
    "the pathology slide shows {}.",
    "{}, H&E stain.",
)


def build_prompts(
    classes: Mapping[str, Sequence[str]],
    templates: Sequence[str] | None = None,
) -> tuple[list[str], Tensor]:
    """Every phrasing of every class inside every template.

    Parameters
    ----------
    classes : mapping of str to list of str
        Class name -> its phrasings (synonyms), e.g. ``{"LUAD": ["lung adenocarcinoma", "LUAD"], ...}``.
        Class order is the mapping's order and becomes the column order of every score.
    templates : list of str, optional
        Each holds ``{}`` (or ``CLASSNAME``) where the phrasing goes. ``None`` uses the phrasings as they are.

    Returns
    -------
    prompts : list of str
        Length P, grouped by class.
    prompt_class : long Tensor (P,)
        Class index of each prompt.

    Examples
    --------
    >>> prompts, idx = build_prompts({"LUAD": ["adenocarcinoma", "LUAD"], "LUSC": ["squamous cell carcinoma"]},
    ...                              ["an H&E image of {}."])
    >>> prompts[1], idx.tolist()
    ('an H&E image of LUAD.', [0, 0, 1])
    """
    if not classes:
        raise InvalidParameterError("build_prompts needs at least one class")
    tmpl = list(templates) if templates is not None else ["{}"]
    if not tmpl:
        raise InvalidParameterError("templates is an empty list; pass None to use the phrasings as they are")
    for t in tmpl:
        if "{}" not in t and "CLASSNAME" not in t:
            raise InvalidParameterError(f"template {t!r} has no '{{}}' or 'CLASSNAME' placeholder")
    prompts: list[str] = []
    index: list[int] = []
    for c, (name, phrasings) in enumerate(classes.items()):
        if isinstance(phrasings, str):
            raise InvalidParameterError(f"class {name!r}: give a list of phrasings, not a single str")
        phrasings = [p for p in phrasings if p and p.strip()]
        if not phrasings:
            raise InvalidParameterError(f"class {name!r} has no phrasings; give at least one description")
        for p in phrasings:
            for t in tmpl:
                prompts.append(t.replace("CLASSNAME", p) if "CLASSNAME" in t else t.replace("{}", p))
                index.append(c)
    return prompts, torch.tensor(index, dtype=torch.long)


def _as_float(x: Tensor | np.ndarray, name: str, ndim: int) -> Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim != ndim:
        raise InvalidParameterError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _check_prompt_class(
    prompt_class: Tensor | np.ndarray | Sequence[int], n_prompts: int
) -> tuple[Tensor, int]:
    idx = torch.as_tensor(prompt_class, dtype=torch.long)
    if idx.ndim != 1 or idx.numel() != n_prompts:
        raise InvalidParameterError(f"prompt_class must have shape ({n_prompts},), got {tuple(idx.shape)}")
    if n_prompts == 0:
        raise InvalidParameterError("no prompts: build them with build_prompts()")
    if int(idx.min()) < 0:
        raise InvalidParameterError("prompt_class holds negative class indices")
    n_classes = int(idx.max()) + 1
    missing = sorted(set(range(n_classes)) - set(idx.tolist()))
    if missing:
        raise InvalidParameterError(f"classes {missing} have no prompts")
    return idx, n_classes


def class_text_embeddings(
    text_emb: Tensor | np.ndarray,
    prompt_class: Tensor | np.ndarray | Sequence[int],
) -> Tensor:
    """CONCH/TITAN prompt ensembling: ``w_c = normalize(mean_p normalize(text_emb[p]))`` -> (C, d)."""
    t = F.normalize(_as_float(text_emb, "text_emb", 2), dim=-1)
    idx, n_classes = _check_prompt_class(prompt_class, t.shape[0])
    sums = torch.zeros(n_classes, t.shape[1], dtype=t.dtype, device=t.device).index_add_(
        0, idx.to(t.device), t
    )
    return F.normalize(sums, dim=-1)  # normalising the sum == normalising the mean


def zero_shot_logits(
    slide_emb: Tensor | np.ndarray,
    text_emb: Tensor | np.ndarray,
    prompt_class: Tensor | np.ndarray | Sequence[int],
    *,
    ensemble: Ensemble = "mean-embedding",
    logit_scale: float = 100.0,
) -> Tensor:
    """Zero-shot class probabilities of slides.

    Parameters
    ----------
    slide_emb : Tensor (B, d)
        Slide embeddings in the joint space (normalised here).
    text_emb : Tensor (P, d)
        Prompt embeddings (normalised here).
    prompt_class : long Tensor (P,)
        Class of each prompt, from :func:`build_prompts`.
    ensemble : {"mean-embedding", "sum-probability"}
        ``"mean-embedding"`` (CONCH, TITAN): softmax over classes of ``logit_scale * cos(slide, w_c)`` with
        ``w_c`` from :func:`class_text_embeddings`. ``"sum-probability"`` (PRISM): softmax over all prompts of
        ``logit_scale * cos(slide, prompt)``, then each class's probabilities summed.
    logit_scale : float
        Multiplier of the cosine similarities (100 in CLIP code; PRISM's ``exp(temperature)``).

    Returns
    -------
    Tensor (B, C)
        Class probabilities; rows sum to 1. ``torch.log`` of them are valid logits for ensembling
        (:func:`slidescope.vlm.fewshot.gda`, ``tip_adapter``).

    Examples
    --------
    >>> import torch
    >>> text = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])   # 3 prompts: 2 for class 0, 1 for class 1
    >>> slides = torch.tensor([[1.0, 0.2], [0.1, 1.0]])
    >>> zero_shot_logits(slides, text, [0, 0, 1], logit_scale=10.0).argmax(1).tolist()
    [0, 1]
    """
    v = F.normalize(_as_float(slide_emb, "slide_emb", 2), dim=-1)
    t = _as_float(text_emb, "text_emb", 2).to(v)
    if v.shape[1] != t.shape[1]:
        raise InvalidParameterError(f"slide_emb has d={v.shape[1]} but text_emb has d={t.shape[1]}")
    if ensemble == "mean-embedding":
        w = class_text_embeddings(t, prompt_class)
        return torch.softmax(logit_scale * v @ w.T, dim=-1)
    if ensemble == "sum-probability":
        idx, n_classes = _check_prompt_class(prompt_class, t.shape[0])
        p = torch.softmax(logit_scale * v @ F.normalize(t, dim=-1).T, dim=-1)
        out = torch.zeros(v.shape[0], n_classes, dtype=p.dtype, device=p.device)
        return out.index_add_(1, idx.to(p.device), p)
    raise InvalidParameterError(f"ensemble must be 'mean-embedding' or 'sum-probability', got {ensemble!r}")


@dataclass(frozen=True)
class MiZeroResult:
    """Output of :func:`mi_zero`.

    Attributes
    ----------
    scores : Tensor (C,)
        Per class, the mean (``pooling="mean"``) or sum (``"sum"``) of its top-k tile cosine similarities;
        ``argmax`` is the prediction (the same for both).
    probs : Tensor (C,)
        ``softmax(logit_scale * scores)`` (for AUROC).
    similarity : Tensor (N, C)
        Tile-text cosine similarities: the heatmap.
    k : int
        The k used (``min(k, N)``).
    pooling : {"mean", "sum"}
        The pooling used.
    """

    scores: Tensor
    probs: Tensor
    similarity: Tensor
    k: int
    pooling: MiZeroPooling = "mean"


def mi_zero(
    tile_emb: Tensor | np.ndarray,
    class_text_emb: Tensor | np.ndarray,
    *,
    k: int = 10,
    logit_scale: float = 100.0,
    pooling: MiZeroPooling = "mean",
) -> MiZeroResult:
    """MI-Zero slide scoring: per-class top-k pooling of tile-text cosine similarities.

    Two published poolings, with the same prediction (``k`` is the same for every class) but different
    probabilities (``tests/golden/mizero.npz``):

    * ``"mean"`` (default): the top-k mean and ``softmax(logit_scale * mean)``, as ``run_mizero`` in
      mahmoodlab/CONCH (``conch/downstream/zeroshot_path.py``, @141cc09), whose probabilities its AUROC uses;
    * ``"sum"``: the top-k sum, as ``topj_pooling`` in mahmoodlab/MI-Zero
      (``src/slidelevel_zeroshot_multiprompt.py``, @047922f). MI-Zero's code stops at the argmax and computes no
      probabilities; ours are ``softmax(logit_scale * sum)``, i.e. a k times sharper softmax than ``"mean"``
      (with ``logit_scale=100`` they saturate to 0/1; pass ``logit_scale=1`` for the sum as raw logits).

    Parameters
    ----------
    tile_emb : Tensor (N, d)
        Tile embeddings of one slide in the joint space (normalised here).
    class_text_emb : Tensor (C, d)
        One text embedding per class, e.g. from :func:`class_text_embeddings` (normalised here).
    k : int
        Tiles pooled per class; ``k=1`` is max pooling and ``k >= N`` mean pooling (k is capped at N).
        MI-Zero tries {1, 5, 10, 50, 100} and picks k on validation.
    logit_scale : float
        Multiplier of the scores before the softmax of ``probs`` (CONCH: the model's ``logit_scale.exp()``).
    pooling : {"mean", "sum"}
        Top-k mean (CONCH's ``run_mizero``) or top-k sum (MI-Zero's ``topj_pooling``).

    Returns
    -------
    MiZeroResult
        ``scores`` (C,), ``probs`` (C,), ``similarity`` (N, C), the ``k`` used and the ``pooling``.

    Examples
    --------
    >>> import torch
    >>> tiles = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])   # 4 tiles
    >>> res = mi_zero(tiles, torch.eye(2), k=2)
    >>> res.similarity.shape, res.k, int(res.scores.argmax())
    (torch.Size([4, 2]), 2, 0)
    """
    z = F.normalize(_as_float(tile_emb, "tile_emb", 2), dim=-1)
    w = F.normalize(_as_float(class_text_emb, "class_text_emb", 2).to(z), dim=-1)
    if z.shape[0] == 0:
        raise InvalidParameterError("mi_zero got a slide with no tiles")
    if z.shape[1] != w.shape[1]:
        raise InvalidParameterError(f"tile_emb has d={z.shape[1]} but class_text_emb has d={w.shape[1]}")
    if k < 1:
        raise InvalidParameterError(f"k must be >= 1, got {k}")
    if pooling not in ("mean", "sum"):
        raise InvalidParameterError(
            f"pooling must be 'mean' (CONCH's run_mizero) or 'sum' (MI-Zero's topj_pooling), got {pooling!r}"
        )
    k_eff = min(int(k), z.shape[0])
    sim = z @ w.T
    top = sim.topk(k_eff, dim=0).values
    scores = top.mean(dim=0) if pooling == "mean" else top.sum(dim=0)
    return MiZeroResult(
        scores=scores,
        probs=torch.softmax(logit_scale * scores, dim=-1),
        similarity=sim,
        k=k_eff,
        pooling=pooling,
    )


@dataclass(frozen=True)
class PromptSpread:
    """Output of :func:`prompt_spread`.

    Attributes
    ----------
    probs : Tensor (S, B, C)
        Class probabilities of every slide under every prompt subset.
    mean, std, min, max : Tensor (B, C)
        Their statistics over the S subsets.
    auroc : Tensor (S,) or None
        Macro one-vs-rest AUROC per subset when labels were given.
    subsets : list of list of int
        The prompt indices of each subset.
    """

    probs: Tensor
    mean: Tensor
    std: Tensor
    min: Tensor
    max: Tensor
    auroc: Tensor | None
    subsets: list[list[int]]


def prompt_spread(
    slide_emb: Tensor | np.ndarray,
    text_emb: Tensor | np.ndarray,
    prompt_class: Tensor | np.ndarray | Sequence[int],
    *,
    labels: Tensor | np.ndarray | None = None,
    n_subsets: int = 50,
    subset_size: int = 1,
    ensemble: Ensemble = "mean-embedding",
    logit_scale: float = 100.0,
    seed: int = 0,
) -> PromptSpread:
    """Zero-shot results across random subsets of each class's prompts (prompt fragility).

    Each subset draws ``min(subset_size, n_c)`` prompts of every class ``c`` without replacement (MI-Zero
    evaluates 50 random prompt sets). ``subset_size=1`` shows single-prompt variance.

    Parameters
    ----------
    slide_emb, text_emb, prompt_class, ensemble, logit_scale
        As in :func:`zero_shot_logits`.
    labels : int array (B,), optional
        True classes; adds the AUROC of every subset.
    n_subsets : int
        Number of random subsets S.
    subset_size : int
        Prompts per class in each subset.
    seed : int
        Seed of the subset draws.

    Returns
    -------
    PromptSpread
        Per-subset probabilities ``(S, B, C)``, their mean/std/min/max ``(B, C)`` and per-subset AUROC.

    Examples
    --------
    >>> import torch
    >>> text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]])  # 2 prompts per class
    >>> spread = prompt_spread(torch.eye(2), text, [0, 0, 1, 1], labels=[0, 1], n_subsets=8, seed=0)
    >>> spread.probs.shape, spread.auroc.shape
    (torch.Size([8, 2, 2]), torch.Size([8]))
    """
    if n_subsets < 1 or subset_size < 1:
        raise InvalidParameterError("n_subsets and subset_size must be >= 1")
    t = _as_float(text_emb, "text_emb", 2)
    idx, n_classes = _check_prompt_class(prompt_class, t.shape[0])
    per_class = [torch.nonzero(idx == c).flatten() for c in range(n_classes)]
    gen = torch.Generator().manual_seed(seed)
    subsets: list[list[int]] = []
    all_probs = []
    for _ in range(n_subsets):
        chosen = torch.cat(
            [p[torch.randperm(len(p), generator=gen)[: min(subset_size, len(p))]] for p in per_class]
        )
        subsets.append(chosen.tolist())
        all_probs.append(
            zero_shot_logits(slide_emb, t[chosen], idx[chosen], ensemble=ensemble, logit_scale=logit_scale)
        )
    probs = torch.stack(all_probs)
    aucs = None
    if labels is not None:
        y = np.asarray(labels)
        aucs = torch.tensor([auroc(y, p.numpy()) for p in probs.detach().cpu()], dtype=torch.float64)
    return PromptSpread(
        probs=probs,
        mean=probs.mean(0),
        std=probs.std(0, unbiased=False),
        min=probs.amin(0),
        max=probs.amax(0),
        auroc=aucs,
        subsets=subsets,
    )


def auroc(
    y_true: np.ndarray | Tensor | Sequence[int], y_score: np.ndarray | Tensor, *, multi_class: str = "ovr"
) -> float:
    """AUROC: binary for scores (B,) (or (B, 2): column 1), macro one-vs-rest (or ``"ovo"``) for (B, C).

    :func:`slidescope.metrics.auroc`: NaN with fewer than two classes in ``y_true``; absent classes are
    left out of the macro average.
    """
    return _metrics.auroc(y_true, y_score, multi_class=multi_class)
