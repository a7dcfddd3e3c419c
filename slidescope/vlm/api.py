"""High-level zero-shot and few-shot classification of slides from their embedding stores.

* :func:`zero_shot` scores slides against class prompts with a :class:`~slidescope.vlm.model.SlideTextModel`
  (slide level: prompt-ensembled text classifier, REFERENCE §2-3.2) or, with ``level="tile"``, per tile
  (similarity maps written into the stores, MI-Zero top-k pooling to the slide, §3.3);
* :func:`few_shot` fits a training-free or linear adapter (:mod:`slidescope.vlm.fewshot`) on a few labelled
  slides' embeddings and predicts others, with bootstrap CIs when their labels are known;
* :func:`load_prompts` reads a prompts YAML: ``classes: {name: [phrasing, ...]}`` and optional
  ``templates: ["a slide showing {}.", ...]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidParameterError
from ..features.store import SlideStore, open_store
from ..mil.score import expand_stores
from .fewshot import BootstrapCI, bootstrap_ci, gda, knn, linear_probe, simpleshot, tip_adapter
from .model import SlideTextModel
from .zeroshot import DEFAULT_TEMPLATES, Ensemble, build_prompts, class_text_embeddings, mi_zero, zero_shot_logits

log = logging.getLogger(__name__)

__all__ = ["Prompts", "load_prompts", "ZeroShotRow", "zero_shot", "slide_embeddings", "tile_embeddings",
           "FewShotResult", "few_shot", "FEW_SHOT_METHODS", "SCORES_PREFIX", "DEFAULT_TEMPLATES"]

#: per-tile similarity maps are written as ``scores/zero-shot/<class>``
SCORES_PREFIX = "zero-shot"
FEW_SHOT_METHODS = ("linear", "simpleshot", "knn", "gda", "tip-adapter")
Level = Literal["slide", "tile"]
StoreLike = str | os.PathLike[str] | SlideStore


@dataclass(frozen=True)
class Prompts:
    """Class phrasings (class order = column order of every score) and the templates they go into."""

    classes: dict[str, list[str]]
    templates: list[str] | None = None

    def build(self) -> tuple[list[str], Tensor]:
        """``(prompts (P,), prompt_class (P,))`` as :func:`~slidescope.vlm.zeroshot.build_prompts`."""
        return build_prompts(self.classes, self.templates)

    @property
    def names(self) -> list[str]:
        return list(self.classes)


def _check_classes(classes: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(classes, Mapping) or not classes:
        raise InvalidParameterError(f"{where}: the prompt set is empty; give classes as "
                                    "{class: [phrasing, ...]} with at least two classes")
    out: dict[str, list[str]] = {}
    for name, phrasings in classes.items():
        if isinstance(phrasings, str):
            phrasings = [phrasings]
        if not isinstance(phrasings, Sequence):
            raise InvalidParameterError(f"{where}: class {name!r} must map to a list of phrasings")
        kept = [str(p).strip() for p in phrasings if p is not None and str(p).strip()]
        if not kept:
            raise InvalidParameterError(f"{where}: class {name!r} has no phrasings; give at least one description")
        out[str(name)] = kept
    if len(out) < 2:
        raise InvalidParameterError(f"{where}: zero-shot classification needs at least two classes, got {list(out)}")
    return out


def load_prompts(source: str | os.PathLike[str] | Mapping[str, Any] | Prompts,
                 templates: Sequence[str] | None = None) -> Prompts:
    """Prompts from a YAML file, a ``{class: [phrasings]}`` mapping or a ``{"classes": ..., "templates": ...}``
    mapping. ``templates`` (when given) replaces the file's; ``[]`` means phrasings as they are."""
    if isinstance(source, Prompts):
        data: Any = {"classes": source.classes, "templates": source.templates}
        where = "prompts"
    elif isinstance(source, Mapping):
        data = dict(source) if "classes" in source else {"classes": dict(source)}
        where = "classes"
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise InvalidParameterError(f"prompts file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InvalidParameterError(f"{path} is not valid YAML: {err}") from err
        where = path.name
        if not isinstance(data, Mapping) or "classes" not in data:
            raise InvalidParameterError(f"{where}: expected a mapping with 'classes: {{name: [phrasing, ...]}}' "
                                        "and optional 'templates: [...]'")
    classes = _check_classes(data.get("classes"), where)
    tmpl = templates if templates is not None else data.get("templates")
    if tmpl is not None:
        if isinstance(tmpl, str) or not isinstance(tmpl, Sequence):
            raise InvalidParameterError(f"{where}: templates must be a list of strings with '{{}}'")
        tmpl = [str(t) for t in tmpl] or None
    prompts = Prompts(classes=classes, templates=tmpl)
    prompts.build()  # validates the templates
    return prompts


def _load_model(model: str | os.PathLike[str] | SlideTextModel, device: str) -> SlideTextModel:
    if isinstance(model, SlideTextModel):
        return model.to(device).eval()
    return SlideTextModel.load(model, map_location=device)


def _stores(stores_or_paths: StoreLike | Sequence[StoreLike]) -> list[Path]:
    items = [stores_or_paths] if isinstance(stores_or_paths, (str, os.PathLike, SlideStore)) else list(stores_or_paths)
    if not items:
        raise InvalidParameterError("no stores given")
    paths = [s.path if isinstance(s, SlideStore) else Path(s) for s in items]
    return expand_stores(paths)


def _slide_name(path: Path) -> str:
    return path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name


def _tiles(store: SlideStore, encoder: str, context_dim: int) -> np.ndarray:
    emb = store.embeddings(encoder).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != context_dim:
        raise InvalidParameterError(f"{store.path.name}: {encoder!r} embeddings have {emb.shape[-1]} dimensions but "
                                    f"the model expects {context_dim}; use the encoder the model was pretrained on")
    if len(emb) == 0:
        raise InvalidParameterError(f"{store.path.name} has no tiles for {encoder!r}")
    return emb


def slide_embeddings(stores_or_paths: StoreLike | Sequence[StoreLike], *, model: str | os.PathLike[str] |
                     SlideTextModel, encoder: str, device: str = "cpu", write: bool = True,
                     name: str | None = None) -> tuple[list[Path], Tensor]:
    """Joint-space slide embeddings (B, dim_latents) of every store; with ``write`` each goes into its store as
    ``slide_embeddings/<name>`` (default ``slidetext-<encoder>``)."""
    net = _load_model(model, device)
    paths = _stores(stores_or_paths)
    dim = net.slide_encoder.config.context_dim
    out = []
    with torch.inference_mode():
        for p in paths:
            tiles = torch.from_numpy(_tiles(open_store(p), encoder, dim)).to(device)
            out.append(net.encode_slide(tiles[None]).squeeze(0).float().cpu())
    emb = torch.stack(out)
    if write:
        key = name or f"slidetext-{encoder}"
        for p, v in zip(paths, emb, strict=True):
            SlideStore.open(p, mode="r+").write_slide_embedding(key, v.numpy(), attrs={
                "encoder": encoder, "dim": int(v.shape[0]), "model": "SlideTextModel"})
    return paths, emb


@dataclass(frozen=True)
class ZeroShotRow:
    """One slide's zero-shot result: ``probs`` maps class -> probability (columns in prompt order)."""

    slide: str
    store: Path
    probs: dict[str, float]

    @property
    def predicted(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    def as_dict(self) -> dict[str, Any]:
        return {"slide": self.slide, **{f"prob_{c}": p for c, p in self.probs.items()}, "predicted": self.predicted}


def _text_classifier(net: SlideTextModel | None, prompts: list[str],
                     text_encoder: Callable[[list[str]], Tensor] | None) -> Tensor:
    with torch.inference_mode():
        t = text_encoder(prompts) if text_encoder is not None else net.encode_text(prompts)  # type: ignore[union-attr]
    return torch.as_tensor(t).float().cpu()


def zero_shot(
    stores_or_paths: StoreLike | Sequence[StoreLike],
    classes: Mapping[str, Sequence[str]] | str | os.PathLike[str] | Prompts,
    *,
    model: str | os.PathLike[str] | SlideTextModel | None = None,
    encoder: str,
    templates: Sequence[str] | None = None,
    ensemble: Ensemble = "mean-embedding",
    level: Level = "slide",
    text_encoder: Callable[[list[str]], Tensor] | None = None,
    k: int = 10,
    logit_scale: float | None = None,
    write: bool = True,
    device: str = "cpu",
) -> list[ZeroShotRow]:
    """Zero-shot class probabilities of slides from class prompts.

    Parameters
    ----------
    stores_or_paths : slide stores (``<slide>.zarr``), folders of stores or open :class:`SlideStore` s.
    classes : ``{class: [phrasing, ...]}``, a prompts YAML path (``classes:`` + optional ``templates:``) or
        :class:`Prompts`. Every phrasing goes into every template; class order is the probability order.
    model : a saved :class:`SlideTextModel` directory or the model itself.
    encoder : the tile embeddings the model was pretrained on.
    templates : override the prompt templates (``None``: the YAML's, else the phrasings as they are).
    ensemble : ``"mean-embedding"`` (CONCH/TITAN: one averaged text embedding per class) or
        ``"sum-probability"`` (PRISM: softmax over all prompts, summed per class).
    level : ``"slide"`` embeds each whole slide (the embedding is written into its store as
        ``slide_embeddings/slidetext-<encoder>``). ``"tile"`` embeds each tile alone, writes the per-tile cosine
        with each class's text embedding as ``scores/zero-shot/<class>`` (N,) ("where does this prompt
        match") and pools it to the slide with MI-Zero's top-``k`` mean.
    text_encoder : for patch-level CLIP encoders whose tile embeddings already live in the text space
        (``level="tile"`` without ``model``): a callable ``list[str] -> (P, d)``.
    logit_scale : softmax temperature of the cosines; default the model's learned ``exp(logit_scale)``
        (100 without a model).
    write : write slide embeddings / tile scores into the stores.

    Returns
    -------
    list of ZeroShotRow
        One per slide, in store order.
    """
    prompts_obj = load_prompts(classes, templates)
    prompts, prompt_class = prompts_obj.build()
    names = prompts_obj.names
    if level not in ("slide", "tile"):
        raise InvalidParameterError(f"level must be 'slide' or 'tile', got {level!r}")
    if model is None and (level == "slide" or text_encoder is None):
        raise InvalidParameterError("zero_shot needs model= (a saved SlideTextModel); only level='tile' with "
                                    "text_encoder= works on tile embeddings already in the text space")
    net = _load_model(model, device) if model is not None else None
    if logit_scale is not None:
        scale = float(logit_scale)
    else:
        scale = float(net.scale().detach()) if net is not None else 100.0
    text = _text_classifier(net, prompts, text_encoder)
    paths = _stores(stores_or_paths)
    if level == "slide":
        paths, emb = slide_embeddings(paths, model=net, encoder=encoder, device=device, write=write)
        probs = zero_shot_logits(emb, text, prompt_class, ensemble=ensemble, logit_scale=scale)
        return [ZeroShotRow(slide=_slide_name(p), store=p, probs=dict(zip(names, map(float, row), strict=True)))
                for p, row in zip(paths, probs, strict=True)]

    w = class_text_embeddings(text, prompt_class)  # (C, d)
    rows = []
    for p in paths:
        store = open_store(p)
        if net is not None:
            z = tile_embeddings(store, model=net, encoder=encoder, device=device)
        else:
            z = torch.from_numpy(store.embeddings(encoder).astype(np.float32))
        if z.shape[1] != w.shape[1]:
            raise InvalidParameterError(f"{p.name}: tile embeddings have {z.shape[1]} dimensions but the text "
                                        f"embeddings {w.shape[1]}; tile-level zero-shot needs both in one space")
        res = mi_zero(z, w, k=k, logit_scale=scale)
        if write:
            writable = SlideStore.open(p, mode="r+")
            for c, name in enumerate(names):
                writable.write_scores(f"{SCORES_PREFIX}/{name}", res.similarity[:, c].numpy().astype(np.float32),
                                      attrs={"encoder": encoder, "kind": "cosine",
                                             "phrasings": prompts_obj.classes[name],
                                             "templates": prompts_obj.templates or []})
        rows.append(ZeroShotRow(slide=_slide_name(p), store=p, probs=dict(zip(names, map(float, res.probs),
                                                                              strict=True))))
    return rows


def tile_embeddings(store: SlideStore | StoreLike, *, model: str | os.PathLike[str] | SlideTextModel, encoder: str,
                    batch_size: int = 256, device: str = "cpu") -> Tensor:
    """Each tile encoded alone (a one-tile bag) by the slide encoder, into the joint space: (N, dim_latents)."""
    net = _load_model(model, device)
    st = store if isinstance(store, SlideStore) else open_store(store)
    tiles = torch.from_numpy(_tiles(st, encoder, net.slide_encoder.config.context_dim))
    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch_size):
            out.append(net.encode_slide(tiles[i : i + batch_size, None].to(device)).float().cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ few-shot


@dataclass
class FewShotResult:
    """Few-shot predictions: ``probs (B, C)`` of the test slides in ``class_names`` order."""

    slides: list[str]
    class_names: list[str]
    probs: Tensor
    method: str
    metrics: dict[str, BootstrapCI] = field(default_factory=dict)
    classifier: Any = None

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for s, row in zip(self.slides, self.probs, strict=True):
            probs = {f"prob_{c}": float(p) for c, p in zip(self.class_names, row, strict=True)}
            out.append({"slide": s, **probs, "predicted": self.class_names[int(row.argmax())]})
        return out


def _embed(stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray, net: SlideTextModel, encoder: str,
           device: str, write: bool) -> tuple[list[str], Tensor]:
    if isinstance(stores, (Tensor, np.ndarray)):
        x = torch.as_tensor(stores).float()
        if x.ndim != 2 or x.shape[1] != net.dim_latents:
            raise InvalidParameterError(f"slide embeddings must have shape (B, {net.dim_latents}) to match the model, "
                                        f"got {tuple(x.shape)}")
        return [str(i) for i in range(len(x))], x
    paths, emb = slide_embeddings(stores, model=net, encoder=encoder, device=device, write=write)
    return [_slide_name(p) for p in paths], emb


def few_shot(
    train_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    train_labels: Sequence[str],
    test_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    *,
    model: str | os.PathLike[str] | SlideTextModel,
    encoder: str,
    method: str = "gda",
    classes: Mapping[str, Sequence[str]] | str | os.PathLike[str] | Prompts | None = None,
    templates: Sequence[str] | None = None,
    test_labels: Sequence[str] | None = None,
    k: int = 5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    write: bool = False,
    device: str = "cpu",
) -> FewShotResult:
    """Fit a few-shot classifier on labelled slides' joint-space embeddings and predict the test slides.

    Parameters
    ----------
    train_stores, test_stores : stores / folders (embedded with ``model`` from ``encoder`` tiles), or ready
        slide embeddings (B, dim_latents).
    train_labels : class name per training slide (same order as the expanded ``train_stores``).
    method : ``"linear"`` (logistic regression, lambda on a held-out part), ``"simpleshot"``, ``"knn"`` (``k``),
        ``"gda"`` or ``"tip-adapter"``.
    classes : prompts; with ``"gda"``/``"tip-adapter"`` the zero-shot logits become a prior blended with the
        adapter, its weight chosen on the support set itself (there is no other labelled data at few shots).
        The class order then follows the prompts; otherwise it is the sorted label names.
    test_labels : class names of the test slides; adds AUROC, accuracy and balanced accuracy with percentile
        bootstrap CIs (``n_bootstrap`` resamples).
    """
    if method not in FEW_SHOT_METHODS:
        raise InvalidParameterError(f"unknown few-shot method {method!r}; use one of {', '.join(FEW_SHOT_METHODS)}")
    net = _load_model(model, device)
    prompts_obj = load_prompts(classes, templates) if classes is not None else None
    _, x_train = _embed(train_stores, net, encoder, device, write)
    test_names, x_test = _embed(test_stores, net, encoder, device, write)
    labels = [str(v) for v in train_labels]
    if len(labels) != len(x_train):
        raise InvalidParameterError(f"{len(labels)} training labels for {len(x_train)} training slides")
    names = prompts_obj.names if prompts_obj is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise InvalidParameterError(f"training labels {unknown} are not among the prompt classes {names}")
    y = torch.tensor([names.index(v) for v in labels])
    zs_train = zs_test = None
    if prompts_obj is not None and method in ("gda", "tip-adapter"):
        prompts, prompt_class = prompts_obj.build()
        text = _text_classifier(net, prompts, None)
        scale = float(net.scale().detach())
        zs_train = torch.log(zero_shot_logits(x_train, text, prompt_class, logit_scale=scale).clamp_min(1e-12))
        zs_test = torch.log(zero_shot_logits(x_test, text, prompt_class, logit_scale=scale).clamp_min(1e-12))
    c = len(names)
    if method == "linear":
        clf = linear_probe(x_train, y, n_classes=c, seed=seed)
    elif method == "simpleshot":
        clf = simpleshot(x_train, y, n_classes=c)
    elif method == "knn":
        clf = knn(x_train, y, k=min(k, len(x_train)), n_classes=c)
    elif method == "gda":
        clf = gda(x_train, y, X_val=x_train if zs_train is not None else None,
                  y_val=y if zs_train is not None else None, zs_val=zs_train, n_classes=c)
    else:
        clf = tip_adapter(x_train, y, X_val=x_train if zs_train is not None else None,
                          y_val=y if zs_train is not None else None, zs_val=zs_train, n_classes=c)
    probs = clf.predict_proba(x_test, zs_test if getattr(clf, "uses_zero_shot", False) else None).float()
    result = FewShotResult(slides=test_names, class_names=names, probs=probs, method=method, classifier=clf)
    if test_labels is not None:
        tl = [str(v) for v in test_labels]
        if len(tl) != len(x_test):
            raise InvalidParameterError(f"{len(tl)} test labels for {len(x_test)} test slides")
        bad = sorted(set(tl) - set(names))
        if bad:
            raise InvalidParameterError(f"test labels {bad} are not among the classes {names}")
        yt = np.array([names.index(v) for v in tl])
        for metric in ("auroc", "accuracy", "balanced_accuracy"):
            try:
                result.metrics[metric] = bootstrap_ci(yt, probs.numpy(), metric, n=n_bootstrap, seed=seed)
            except InvalidParameterError as err:  # e.g. AUROC with one class among the test slides
                log.warning("few_shot: %s not computed: %s", metric, err)
    return result
