"""High-level zero-shot and few-shot classification of slides from their embedding stores.

* :func:`zero_shot` scores slides against class prompts with a :class:`~slidescope.vlm.model.SlideTextModel`,
  a published slide model (``model="prism"`` / ``"titan"``, :mod:`slidescope.vlm.published`) at slide level
  (prompt-ensembled text classifier, ``docs/REFERENCE-models.md`` §1.4, §2.3, §3.2), or per tile with
  ``level="tile"``: similarity maps written into the stores and MI-Zero top-k pooling to the slide
  (``docs/REFERENCE-models.md`` §3.3), from a SlideTextModel or a
  patch-level CLIP model whose text tower shares its image tower's space (``model="plip"`` /
  ``"quiltnet"`` / ``"conch-v1"``);
* :func:`generate_reports` writes PRISM's report for each slide;
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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._location import Location, location_name
from ..errors import InvalidParameterError
from ..features.encoders.clip import ClipTextTower
from ..features.store import SlideStore, open_store
from ._embeddings import (
    ModelLike,
    SlideModel,
    StoreLike,
    default_encoder,
    load_model,
    load_slide_model,
    resolve_model,
    slide_embeddings,
    slide_name,
    store_locations,
    stored_slide_embeddings,
    tile_embeddings,
)
from ._fewshot_inputs import model_embedder, pool_by_patient, slide_encoder_embedder
from ._prompts import Prompts, load_prompts
from .fewshot import (
    BootstrapCI,
    FewShotClassifier,
    bootstrap_ci,
    gda,
    knn,
    linear_probe,
    simpleshot,
    simpleshot_cosine,
    tip_adapter,
)
from .model import SlideTextModel
from .published import PrismModel, PublishedSlideTextModel
from .zeroshot import (
    DEFAULT_TEMPLATES,
    Ensemble,
    MiZeroPooling,
    class_text_embeddings,
    mi_zero,
    zero_shot_logits,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..features.slide_encoders import SlideEncoder

log = logging.getLogger(__name__)

__all__ = [
    "Prompts",
    "load_prompts",
    "load_slide_model",
    "ZeroShotRow",
    "zero_shot",
    "slide_embeddings",
    "stored_slide_embeddings",
    "tile_embeddings",
    "generate_reports",
    "FewShotResult",
    "few_shot",
    "FEW_SHOT_METHODS",
    "SCORES_PREFIX",
    "DEFAULT_TEMPLATES",
]

#: the examples of the names defined in the helper modules and documented here, run by doctest with this module's
__test__ = {"Prompts": Prompts, "load_prompts": load_prompts}

#: per-tile similarity maps are written as ``scores/zero-shot/<class>``
SCORES_PREFIX = "zero-shot"
FEW_SHOT_METHODS = ("linear", "simpleshot", "simpleshot-cosine", "knn", "gda", "tip-adapter")
Level = Literal["slide", "tile"]


@dataclass(frozen=True)
class ZeroShotRow:
    """One slide's zero-shot result: ``probs`` maps class -> probability (columns in prompt order)."""

    slide: str
    store: Location  # a local Path, or the URL of a store on an fsspec file system
    probs: dict[str, float]

    @property
    def predicted(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slide": self.slide,
            **{f"prob_{c}": p for c, p in self.probs.items()},
            "predicted": self.predicted,
        }


def _text_classifier(
    net: object, prompts: list[str], text_encoder: Callable[[list[str]], Tensor] | None
) -> Tensor:
    with torch.inference_mode():
        if text_encoder is not None:
            t = text_encoder(prompts)
        elif isinstance(net, ClipTextTower):
            t = net.encode(prompts)
        else:
            t = net.encode_text(prompts)  # type: ignore[attr-defined]
    return torch.as_tensor(t).float().cpu()


def _check_same_weights(tower: ClipTextTower, store: SlideStore, encoder: str) -> None:
    digest = store.encoder_attrs(encoder).get("weights_digest")
    if tower.weights_digest and digest and digest != tower.weights_digest:
        raise InvalidParameterError(
            f"{store.name}: the {encoder!r} tile embeddings were made with other weights ({digest[:19]}...) than "
            f"the {tower.name!r} text tower ({tower.weights_digest[:19]}...); image and text towers must come from "
            f"the same file for their embeddings to share a space"
        )


def zero_shot(
    stores_or_paths: StoreLike | Sequence[StoreLike],
    classes: Mapping[str, Sequence[str]] | str | os.PathLike[str] | Prompts,
    *,
    model: ModelLike | None = None,
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    templates: Sequence[str] | None = None,
    ensemble: Ensemble | None = None,
    level: Level | None = None,
    text_encoder: Callable[[list[str]], Tensor] | None = None,
    k: int = 10,
    pooling: MiZeroPooling = "mean",
    logit_scale: float | None = None,
    slide_embedding: str | None = None,
    write: bool = True,
    device: str = "cpu",
) -> list[ZeroShotRow]:
    """Zero-shot class probabilities of slides from class prompts.

    Parameters
    ----------
    stores_or_paths : store, path or list of them
        Slide stores (``<slide>.zarr``), folders of stores, or open :class:`SlideStore` s.
    classes : mapping, path or Prompts
        ``{class: [phrasing, ...]}``, a prompts YAML path (``classes:`` + optional ``templates:``) or
        :class:`Prompts`. Every phrasing goes into every template; class order is the probability order.
    model : model, folder or name
        A :class:`SlideTextModel` or its saved folder; a published slide model ``"prism"`` / ``"titan"``
        (:func:`~slidescope.vlm.published.load_published_model`); or a patch-level CLIP model ``"plip"`` /
        ``"quiltnet"`` / ``"conch-v1"`` (tile level only: its text tower scores the tiles its image tower
        embedded; CONCH v1's stored features are projected with its ``proj_contrast`` first).
    encoder : str, optional
        The tile embeddings to read. Default for a named model: the one it needs (``virchow`` for PRISM,
        ``conch-v1.5`` for TITAN, the CLIP model's own name); required for a SlideTextModel. A store without them,
        or with another encoder's, is a clear error naming what to extract.
    weights : path, optional
        A named model's local files (a copy of its hub repository, or the CLIP weights file); default: the hub.
    trust_remote_code : bool
        Allow PRISM's / TITAN's own modelling code to run (required for them; see the publishers' repositories).
    templates : list of str, optional
        Override the prompt templates (``None``: the YAML's, else the phrasings as they are).
    ensemble : {"mean-embedding", "sum-probability"}, optional
        ``"mean-embedding"`` (CONCH, TITAN: one averaged text embedding per class) or ``"sum-probability"``
        (PRISM: softmax over all prompts, summed per class). Default: the published model's own, else mean.
    level : {"slide", "tile"}, optional
        ``"slide"`` (default for slide models) embeds each whole slide (written into its store, see
        :func:`slide_embeddings`). ``"tile"`` (default for CLIP models) scores each tile, writes the cosine with
        each class's text embedding as ``scores/zero-shot/<class>`` (N,) ("where does this prompt match") and
        pools it to the slide with MI-Zero's top-``k`` pooling (``pooling``).
    text_encoder : callable, optional
        ``list[str] -> (P, d)`` for tile embeddings already in a text space, without ``model``.
    k : int
        Tiles pooled per class at tile level.
    pooling : {"mean", "sum"}
        Tile-level top-``k`` pooling: ``"mean"`` as CONCH's ``run_mizero`` (probabilities
        ``softmax(logit_scale * mean)``), ``"sum"`` as MI-Zero's ``topj_pooling`` (same prediction, ``k`` times
        sharper probabilities); see :func:`~slidescope.vlm.zeroshot.mi_zero`.
    logit_scale : float, optional
        Multiplier of the cosines before the softmax; default the model's (SlideTextModel and PRISM: learned
        ``exp(logit_scale)``; TITAN 1, as its ``zero_shot``; CLIP models: the checkpoint's; else 100).
    slide_embedding : str, optional
        Reuse the slide embeddings stored under this name (by an earlier run) instead of encoding the slides.
    write : bool
        Write slide embeddings / tile similarity maps into the stores.
    device : str
        Where the models run.

    Returns
    -------
    list of ZeroShotRow
        One per slide, in store order; ``row.probs`` sums to 1.

    Examples
    --------
    >>> rows = zero_shot("stores/", {"tumour": ["carcinoma"], "normal": ["benign tissue"]},
    ...                  model="runs/pretrain/model", encoder="he-descriptor")            # doctest: +SKIP
    >>> rows = zero_shot("stores/", "prompts.yaml", model="prism", weights="Prism/",
    ...                  trust_remote_code=True)                                           # doctest: +SKIP
    >>> rows = zero_shot("stores/", "prompts.yaml", model="plip", weights="plip/")        # doctest: +SKIP
    >>> rows[0].predicted, rows[0].probs                                                   # doctest: +SKIP
    ('tumour', {'tumour': 0.93, 'normal': 0.07})
    """
    prompts_obj = load_prompts(classes, templates)
    prompts, prompt_class = prompts_obj.build()
    _check_zero_shot_options(model, level, pooling, text_encoder)
    net = resolve_model(model, weights=weights, trust_remote_code=trust_remote_code, device=device)
    level = _zero_shot_level(net, level)
    enc = ""  # not read when the slide embeddings are stored already
    if not (level == "slide" and slide_embedding is not None):  # reading tiles: which embeddings?
        found = default_encoder(net, encoder) if net is not None else encoder
        if found is None:
            raise InvalidParameterError("give encoder=: the tile embeddings to score")
        enc = found
    if ensemble is None:
        ensemble = net.ensemble if isinstance(net, PublishedSlideTextModel) else "mean-embedding"
    scale = _logit_scale(net, logit_scale)
    text = _text_classifier(net, prompts, text_encoder)
    paths = store_locations(stores_or_paths)
    if level == "slide":
        if not isinstance(net, (SlideTextModel, PublishedSlideTextModel)):  # pragma: no cover - guarded above
            raise InvalidParameterError("slide-level zero-shot needs a slide model")
        if slide_embedding is not None:
            paths, emb = stored_slide_embeddings(paths, slide_embedding, model=net)
        else:
            paths, emb = slide_embeddings(
                paths,
                model=net,
                encoder=enc,
                device=device,
                write=write,
            )
        if emb.shape[1] != text.shape[1]:
            raise InvalidParameterError(
                f"slide embeddings have {emb.shape[1]} dimensions but the text embeddings "
                f"{text.shape[1]}; both must come from one model"
            )
        probs = zero_shot_logits(emb, text, prompt_class, ensemble=ensemble, logit_scale=scale)
        return [
            ZeroShotRow(
                slide=slide_name(p), store=p, probs=dict(zip(prompts_obj.names, map(float, row), strict=True))
            )
            for p, row in zip(paths, probs, strict=True)
        ]
    w = class_text_embeddings(text, prompt_class)  # (C, d)
    return [
        _zero_shot_tiles(
            p, net, enc, w, prompts_obj, k=k, scale=scale, pooling=pooling, write=write, device=device
        )
        for p in paths
    ]


def _check_zero_shot_options(
    model: ModelLike | None,
    level: Level | None,
    pooling: MiZeroPooling,
    text_encoder: Callable[[list[str]], Tensor] | None,
) -> None:
    """The option errors of :func:`zero_shot` that need no model."""
    if level is not None and level not in ("slide", "tile"):
        raise InvalidParameterError(f"level must be 'slide' or 'tile', got {level!r}")
    if pooling not in ("mean", "sum"):
        raise InvalidParameterError(
            f"pooling must be 'mean' or 'sum' (MI-Zero top-k pooling), got {pooling!r}"
        )
    if model is None and (level != "tile" or text_encoder is None):
        raise InvalidParameterError(
            "zero_shot needs model= (a saved SlideTextModel, 'prism', 'titan', 'plip', "
            "'quiltnet' or 'conch-v1'); only level='tile' with text_encoder= works on tile embeddings "
            "already in the text space"
        )


def _zero_shot_level(net: object, level: Level | None) -> Level:
    """The level :func:`zero_shot` works at: the one asked for, checked against the model, else the model's."""
    level = level or ("tile" if isinstance(net, ClipTextTower) or net is None else "slide")
    if isinstance(net, ClipTextTower) and level == "slide":
        raise InvalidParameterError(
            f"{net.name!r} is a patch-level CLIP model without a slide encoder: use "
            "level='tile' (MI-Zero pooling of its per-tile scores)"
        )
    if isinstance(net, PublishedSlideTextModel) and level == "tile":
        raise InvalidParameterError(
            f"{net.config.title} scores whole slides; per-tile maps need a patch-level CLIP "
            "model ('plip', 'quiltnet', 'conch-v1') or a SlideTextModel"
        )
    return level


def _logit_scale(net: object, logit_scale: float | None) -> float:
    """The multiplier of the cosines: the one given, else the model's (SlideTextModel, PRISM, CLIP), else 100."""
    if logit_scale is not None:
        return float(logit_scale)
    if isinstance(net, (SlideTextModel, PublishedSlideTextModel)):
        return float(net.scale().detach())
    if isinstance(net, ClipTextTower):
        return float(net.logit_scale)
    return 100.0


def _zero_shot_tiles(
    p: Location,
    net: object,
    enc: str,
    w: Tensor,
    prompts_obj: Prompts,
    *,
    k: int,
    scale: float,
    pooling: MiZeroPooling,
    write: bool,
    device: str,
) -> ZeroShotRow:
    """Tile-level zero-shot of one store: per-tile cosines with the class embeddings ``w`` (C, d), written as
    ``scores/zero-shot/<class>`` when ``write``, pooled to the slide by MI-Zero top-``k`` pooling."""
    names = prompts_obj.names
    store = open_store(p, encoder=enc)
    if isinstance(net, SlideTextModel):
        z = tile_embeddings(store, model=net, encoder=enc, device=device)
    else:
        z = torch.from_numpy(np.asarray(store.embeddings(enc), dtype=np.float32))
        if isinstance(net, ClipTextTower):
            _check_same_weights(net, store, enc)
            with torch.inference_mode():  # identity, except CONCH v1 (features stored before proj_contrast)
                z = net.image_to_joint(z).float().cpu()
    if z.shape[1] != w.shape[1]:
        raise InvalidParameterError(
            f"{location_name(p)}: tile embeddings have {z.shape[1]} dimensions but the text "
            f"embeddings {w.shape[1]}; tile-level zero-shot needs both in one space"
        )
    res = mi_zero(z, w, k=k, logit_scale=scale, pooling=pooling)
    if write:
        writable = SlideStore.open(p, mode="r+", tiling=store.tiling_key)
        for c, name in enumerate(names):
            writable.write_scores(
                f"{SCORES_PREFIX}/{name}",
                res.similarity[:, c].numpy().astype(np.float32),
                attrs={
                    "encoder": enc,
                    "kind": "cosine",
                    "model": getattr(net, "name", type(net).__name__ if net else "external"),
                    "phrasings": prompts_obj.classes[name],
                    "templates": prompts_obj.templates or [],
                },
            )
    return ZeroShotRow(
        slide=slide_name(p), store=p, probs=dict(zip(names, map(float, res.probs), strict=True))
    )


def generate_reports(
    stores_or_paths: StoreLike | Sequence[StoreLike],
    *,
    model: str | PrismModel = "prism",
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    num_beams: int = 5,
    max_length: int = 100,
    device: str = "cpu",
) -> list[dict[str, str]]:
    """PRISM's generated report for each slide (its BioGPT decoder conditioned on the slide's image latents).

    Parameters
    ----------
    stores_or_paths : store, path or list of them
        Stores with Virchow (v1) tile embeddings.
    model : "prism" or PrismModel
        The model (loaded with ``weights`` / ``trust_remote_code`` when a name).
    num_beams, max_length : int
        Beam search width (the model card uses 5) and longest report in tokens.

    Returns
    -------
    list of dict
        ``{"slide": name, "report": text}`` per store, in order.

    Examples
    --------
    >>> generate_reports("stores/", weights="Prism/", trust_remote_code=True)   # doctest: +SKIP
    [{'slide': 'TCGA-...', 'report': 'Diagnosis: Invasive ductal carcinoma ...'}]
    """
    net = load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)
    if not isinstance(net, PrismModel):
        raise InvalidParameterError(
            "report generation needs PRISM (model='prism'): the other models ship no "
            "report decoder (TITAN's was removed from its release)"
        )
    enc = default_encoder(net, encoder)
    rows = []
    for p in store_locations(stores_or_paths):
        store = open_store(p, encoder=enc)
        net.check_store(store, enc)
        tiles = torch.from_numpy(np.asarray(store.embeddings(enc), dtype=np.float32))
        report = net.generate_reports(tiles[None], num_beams=num_beams, max_length=max_length)[0]
        rows.append({"slide": slide_name(p), "report": report})
    return rows


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
    tuning: str = (
        "none"  # how hyperparameters were chosen: validation, leave-one-out, holdout, default, fixed, none
    )
    hyperparameters: dict[str, float] = field(default_factory=dict)  # the values chosen

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for s, row in zip(self.slides, self.probs, strict=True):
            probs = {f"prob_{c}": float(p) for c, p in zip(self.class_names, row, strict=True)}
            out.append({"slide": s, **probs, "predicted": self.class_names[int(row.argmax())]})
        return out


def few_shot(
    train_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    train_labels: Sequence[str],
    test_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    *,
    model: ModelLike | None = None,
    slide_encoder: str | SlideEncoder | None = None,
    patients: Mapping[str, str] | None = None,
    encoder: str | None = None,
    method: str = "gda",
    classes: Mapping[str, Sequence[str]] | str | os.PathLike[str] | Prompts | None = None,
    templates: Sequence[str] | None = None,
    test_labels: Sequence[str] | None = None,
    val_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray | None = None,
    val_labels: Sequence[str] | None = None,
    base_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray | None = None,
    k: int = 5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    write: bool = False,
    device: str = "cpu",
) -> FewShotResult:
    """Fit a few-shot classifier on labelled slides' joint-space embeddings and predict the test slides.

    Parameters
    ----------
    train_stores, test_stores : stores, folders, or array of shape (B, dim_latents)
        Stores (embedded with ``model`` from their ``encoder`` tiles) or ready joint-space slide embeddings.
    train_labels : list of str
        Class name per training slide (same order as the expanded ``train_stores``).
    model : model, folder or name
        A :class:`SlideTextModel` (or its folder) or a published slide model (``"prism"``, ``"titan"``; with
        ``weights`` / ``trust_remote_code`` as in :func:`zero_shot`).
    slide_encoder : str or SlideEncoder, optional
        Instead of ``model``: a registered slide encoder (``"mean"``, ``"feather-uni2"``...,
        :func:`~slidescope.features.slide_encoders.embed_slides`; ``weights``, ``trust_remote_code``,
        ``write`` as there). It has no text tower, so no ``classes`` prompts; every slide must embed.
    patients : mapping, optional
        Slide name -> patient: classify patients, each the mean of its slides' embeddings
        (:func:`~slidescope.features.slide_encoders.pool_patients`; also for MOOZY, whose own case-level
        model is :func:`~slidescope.features.slide_encoders.embed_patients`). All of a patient's slides need
        the same label; a patient may not be both in the support and the test set. ``result.slides`` are
        then the patients.
    encoder : str, optional
        The tile embeddings to read (default for published models and slide encoders: the one they need).
    method : {"gda", "linear", "simpleshot", "simpleshot-cosine", "knn", "tip-adapter"}
        ``"linear"``: logistic regression (scikit-learn's objective); ``"simpleshot"``: the reference's
        Euclidean nearest centroid after CL2N (``"simpleshot-cosine"``: our earlier cosine variant); ``"knn"``
        uses ``k`` neighbours. See :mod:`slidescope.vlm.fewshot`.
    classes : mapping, path or Prompts, optional
        Prompts; with ``"gda"``/``"tip-adapter"`` the zero-shot logits become a prior blended with the adapter.
        The class order then follows the prompts (every training label must be a prompt class); otherwise it is
        the sorted label names.
    test_labels : list of str, optional
        Class names of the test slides; adds AUROC, accuracy and balanced accuracy with percentile bootstrap CIs
        (``n_bootstrap`` resamples, ``seed``).
    val_stores, val_labels : optional
        Labelled validation slides, used only to choose hyperparameters (GDA's alpha, Tip-Adapter's alpha and
        beta, the probe's lambda): ``tuning="validation"``. Without them the choice never scores a slide with a
        model that saw it: leave-one-out on the support set (GDA, Tip-Adapter; at least 2 shots per class),
        a stratified held-out part of it (linear probe), else the reference code's defaults
        (``tuning="default"``). ``result.tuning`` and ``result.hyperparameters`` say which and what.
    base_stores : optional
        Unlabelled slides whose mean embedding SimpleShot's CL2N subtracts (the reference's base-class mean);
        without them, the mean of the support slides.
    write : bool
        Write the slide embeddings into the stores (see :func:`slide_embeddings`).

    Returns
    -------
    FewShotResult
        ``probs`` (B_test, C) in ``class_names`` order, ``metrics`` when ``test_labels`` are given.

    Examples
    --------
    >>> res = few_shot(support_stores, ["tumour", "normal", "tumour", "normal"], test_stores,
    ...                model="runs/pretrain/model", encoder="he-descriptor", method="gda")   # doctest: +SKIP
    >>> res.probs.shape                                                                     # doctest: +SKIP
    torch.Size([12, 2])
    """
    if method not in FEW_SHOT_METHODS:
        raise InvalidParameterError(
            f"unknown few-shot method {method!r}; use one of {', '.join(FEW_SHOT_METHODS)}"
        )
    if (model is None) == (slide_encoder is None):
        raise InvalidParameterError("give model= (--model) or slide_encoder= (--slide-encoder), one of them")
    prompts_obj = load_prompts(classes, templates) if classes is not None else None
    net: SlideModel | None = None
    if slide_encoder is not None:
        if prompts_obj is not None:
            raise InvalidParameterError(
                "a slide encoder has no text tower: prompts (classes=, --prompts) need a slide-text model"
            )
        embed = slide_encoder_embedder(slide_encoder, encoder, weights, trust_remote_code, device, write)
    else:
        net = load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
        enc = default_encoder(net, encoder)
        embed = model_embedder(net, enc, device, write)
    train_names, x_train = embed(train_stores)
    test_names, x_test = embed(test_stores)
    labels: list[str] = [str(v) for v in train_labels]
    if patients is not None:
        train_names, x_train, got = pool_by_patient(train_names, x_train, labels, patients, "support")
        test_names, x_test, test_labels = pool_by_patient(test_names, x_test, test_labels, patients, "test")
        labels = got or []
        both = sorted(set(train_names) & set(test_names))
        if both:
            raise InvalidParameterError(f"patient(s) {both[:10]} are in both the support and the test slides")
    if len(labels) != len(x_train):
        raise InvalidParameterError(f"{len(labels)} training labels for {len(x_train)} training slides")
    names = prompts_obj.names if prompts_obj is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise InvalidParameterError(f"training labels {unknown} are not among the prompt classes {names}")
    y = torch.tensor([names.index(v) for v in labels])
    x_val = y_val = None
    if (val_stores is None) != (val_labels is None):
        raise InvalidParameterError(
            "give both val_stores and val_labels (validation slides and their classes)"
        )
    if val_stores is not None:
        val_names, x_val = embed(val_stores)
        if patients is not None:
            _, x_val, val_labels = pool_by_patient(val_names, x_val, val_labels, patients, "validation")
        y_val = torch.tensor(_class_indices(val_labels, len(x_val), names, "validation"))  # type: ignore[arg-type]
    x_base = None
    if base_stores is not None:
        base_names, x_base = embed(base_stores)
        if patients is not None:
            x_base = pool_by_patient(base_names, x_base, None, patients, "base")[1]
    zs_train = zs_test = zs_val = None
    if prompts_obj is not None and net is not None and method in ("gda", "tip-adapter"):
        prompts, prompt_class = prompts_obj.build()
        text = _text_classifier(net, prompts, None)
        scale = float(net.scale().detach())
        mode: Ensemble = net.ensemble if isinstance(net, PublishedSlideTextModel) else "mean-embedding"

        def prior(x: Tensor) -> Tensor:
            return torch.log(
                zero_shot_logits(x, text, prompt_class, ensemble=mode, logit_scale=scale).clamp_min(1e-12)
            )

        zs_train, zs_test = prior(x_train), prior(x_test)
        zs_val = prior(x_val) if x_val is not None else None
    clf = _fit_few_shot(
        method, x_train, y, len(names), x_val, y_val, zs_train, zs_val, x_base, k=k, seed=seed
    )
    probs = clf.predict_proba(x_test, zs_test if getattr(clf, "uses_zero_shot", False) else None).float()
    result = FewShotResult(
        slides=test_names,
        class_names=names,
        probs=probs,
        method=method,
        classifier=clf,
        tuning=clf.tuning,
        hyperparameters=dict(clf.hyperparameters),
    )
    if x_val is not None and clf.tuning not in ("validation", "none"):
        log.warning(
            "few_shot: %s has nothing to tune on the validation slides here (tuning=%s)", method, clf.tuning
        )
    if test_labels is not None:
        yt = np.array(_class_indices(test_labels, len(x_test), names, "test"))
        for metric in ("auroc", "accuracy", "balanced_accuracy"):
            ci = bootstrap_ci(yt, probs.numpy(), metric, n=n_bootstrap, seed=seed)
            if np.isnan(ci.estimate):  # undefined, e.g. AUROC with one class among the test slides
                log.warning("few_shot: %s not computed: undefined on these test labels", metric)
            else:
                result.metrics[metric] = ci
    return result


def _class_indices(labels: Sequence[str], n: int, names: list[str], what: str) -> list[int]:
    """Indices into ``names`` of the ``n`` ``what`` slides' class labels (validation or test)."""
    given = [str(v) for v in labels]
    if len(given) != n:
        raise InvalidParameterError(f"{len(given)} {what} labels for {n} {what} slides")
    bad = sorted(set(given) - set(names))
    if bad:
        raise InvalidParameterError(f"{what} labels {bad} are not among the classes {names}")
    return [names.index(v) for v in given]


def _fit_few_shot(
    method: str,
    x_train: Tensor,
    y: Tensor,
    c: int,
    x_val: Tensor | None,
    y_val: Tensor | None,
    zs_train: Tensor | None,
    zs_val: Tensor | None,
    x_base: Tensor | None,
    *,
    k: int,
    seed: int,
) -> FewShotClassifier:
    """The :mod:`slidescope.vlm.fewshot` classifier of ``method`` fitted on the support (and validation) slides."""
    if method == "linear":
        return linear_probe(x_train, y, X_val=x_val, y_val=y_val, n_classes=c, seed=seed)
    if method == "simpleshot":
        return simpleshot(x_train, y, X_base=x_base, n_classes=c)
    if method == "simpleshot-cosine":
        return simpleshot_cosine(x_train, y, n_classes=c)
    if method == "knn":
        return knn(x_train, y, k=min(k, len(x_train)), n_classes=c)
    if method == "gda":
        return gda(
            x_train,
            y,
            zs=zs_train,
            X_val=x_val if zs_val is not None else None,
            y_val=y_val if zs_val is not None else None,
            zs_val=zs_val,
            n_classes=c,
        )
    return tip_adapter(x_train, y, zs=zs_train, X_val=x_val, y_val=y_val, zs_val=zs_val, n_classes=c)
