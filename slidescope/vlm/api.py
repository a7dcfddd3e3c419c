"""High-level zero-shot and few-shot classification of slides from their embedding stores.

* :func:`zero_shot` scores slides against class prompts with a :class:`~slidescope.vlm.model.SlideTextModel`,
  a published slide model (``model="prism"`` / ``"titan"``, :mod:`slidescope.vlm.published`) at slide level
  (prompt-ensembled text classifier, ``docs/REFERENCE-models.md`` §1.4, §2.3, §3.2), or per tile with
  ``level="tile"``: similarity maps written into the stores and MI-Zero top-k pooling to the slide
  (``docs/REFERENCE-models.md`` §3.3), from a SlideTextModel or a
  patch-level CLIP model whose tile embeddings are already in its text space (``model="plip"`` /
  ``"quiltnet"``);
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
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._location import Location, expand_stores, location_name, require_local
from ..errors import InvalidParameterError
from ..features.encoders.clip import ClipTextTower, create_clip_text_tower, list_clip_text_towers
from ..features.store import SlideStore, open_store
from .fewshot import (
    BootstrapCI,
    bootstrap_ci,
    gda,
    knn,
    linear_probe,
    simpleshot,
    simpleshot_cosine,
    tip_adapter,
)
from .model import SlideTextModel
from .published import PrismModel, PublishedSlideTextModel, is_published_model, load_published_model
from .zeroshot import (
    DEFAULT_TEMPLATES,
    Ensemble,
    MiZeroPooling,
    build_prompts,
    class_text_embeddings,
    mi_zero,
    zero_shot_logits,
)

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

#: per-tile similarity maps are written as ``scores/zero-shot/<class>``
SCORES_PREFIX = "zero-shot"
FEW_SHOT_METHODS = ("linear", "simpleshot", "simpleshot-cosine", "knn", "gda", "tip-adapter")
Level = Literal["slide", "tile"]
StoreLike = str | os.PathLike[str] | SlideStore
SlideModel = SlideTextModel | PublishedSlideTextModel
ModelLike = str | os.PathLike[str] | SlideTextModel | PublishedSlideTextModel | ClipTextTower


@dataclass(frozen=True)
class Prompts:
    """Class phrasings and the templates they go into.

    Attributes
    ----------
    classes : dict of str to list of str
        Class name -> its phrasings (synonyms); the order of the classes is the column order of every score.
    templates : list of str or None
        Each holds ``{}`` (or ``CLASSNAME``) where a phrasing goes; ``None``: phrasings as they are.

    Examples
    --------
    >>> p = Prompts({"LUAD": ["lung adenocarcinoma"], "LUSC": ["squamous cell carcinoma"]}, ["an image of {}."])
    >>> p.build()[0]
    ['an image of lung adenocarcinoma.', 'an image of squamous cell carcinoma.']
    """

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
        raise InvalidParameterError(
            f"{where}: the prompt set is empty; give classes as "
            "{class: [phrasing, ...]} with at least two classes"
        )
    out: dict[str, list[str]] = {}
    for name, phrasings in classes.items():
        if isinstance(phrasings, str):
            phrasings = [phrasings]
        if not isinstance(phrasings, Sequence):
            raise InvalidParameterError(f"{where}: class {name!r} must map to a list of phrasings")
        kept = [str(p).strip() for p in phrasings if p is not None and str(p).strip()]
        if not kept:
            raise InvalidParameterError(
                f"{where}: class {name!r} has no phrasings; give at least one description"
            )
        out[str(name)] = kept
    if len(out) < 2:
        raise InvalidParameterError(
            f"{where}: zero-shot classification needs at least two classes, got {list(out)}"
        )
    return out


def load_prompts(
    source: str | os.PathLike[str] | Mapping[str, Any] | Prompts, templates: Sequence[str] | None = None
) -> Prompts:
    """Read and check class prompts.

    Parameters
    ----------
    source : path, mapping or Prompts
        A YAML file (``classes: {name: [phrasing, ...]}`` and optional ``templates: ["a slide of {}.", ...]``),
        a ``{class: [phrasings]}`` mapping, or a ``{"classes": ..., "templates": ...}`` mapping.
    templates : list of str, optional
        Replaces the source's templates; ``[]`` means the phrasings as they are.

    Returns
    -------
    Prompts
        Checked: at least two classes, each with at least one non-blank phrasing; every template has a
        placeholder. Anything else raises :class:`~slidescope.errors.InvalidParameterError` naming the problem.

    Examples
    --------
    >>> p = load_prompts({"tumour": ["carcinoma", "malignant cells"], "normal": ["benign tissue"]},
    ...                  templates=["an H&E image of {}."])
    >>> p.names, len(p.build()[0])
    (['tumour', 'normal'], 3)
    >>> load_prompts({"tumour": ["carcinoma"], "normal": []})
    Traceback (most recent call last):
    ...
    slidescope.errors.InvalidParameterError: classes: class 'normal' has no phrasings; give at least one description
    """
    if isinstance(source, Prompts):
        data: Any = {"classes": source.classes, "templates": source.templates}
        where = "prompts"
    elif isinstance(source, Mapping):
        data = dict(source) if "classes" in source else {"classes": dict(source)}
        where = "classes"
    else:
        import yaml

        path = require_local(source, "the prompts file")
        if not path.is_file():
            raise InvalidParameterError(f"prompts file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InvalidParameterError(f"{path} is not valid YAML: {err}") from err
        where = path.name
        if not isinstance(data, Mapping) or "classes" not in data:
            raise InvalidParameterError(
                f"{where}: expected a mapping with 'classes: {{name: [phrasing, ...]}}' "
                "and optional 'templates: [...]'"
            )
    classes = _check_classes(data.get("classes"), where)
    tmpl = templates if templates is not None else data.get("templates")
    if tmpl is not None:
        if isinstance(tmpl, str) or not isinstance(tmpl, Sequence):
            raise InvalidParameterError(f"{where}: templates must be a list of strings with '{{}}'")
        tmpl = [str(t) for t in tmpl] or None
    prompts = Prompts(classes=classes, templates=tmpl)
    prompts.build()  # validates the templates
    return prompts


def _resolve_model(
    model: ModelLike | None, *, weights: str | os.PathLike[str] | None, trust_remote_code: bool, device: str
) -> SlideTextModel | PublishedSlideTextModel | ClipTextTower | None:
    """``model`` as a loaded object: a registered name (published slide model or patch-level CLIP text tower), a
    saved :class:`SlideTextModel` folder, or an already loaded model (moved to ``device``, eval mode)."""
    if model is None:
        return None
    if isinstance(model, (SlideTextModel, PublishedSlideTextModel, ClipTextTower)):
        return model.to(device).eval()
    if is_published_model(model):
        return load_published_model(str(model), weights, trust_remote_code=trust_remote_code, device=device)
    if isinstance(model, str) and model in list_clip_text_towers():
        return create_clip_text_tower(model, weights=weights, device=device)
    if weights is not None:
        raise InvalidParameterError(
            f"weights= is for named models ({', '.join(_model_names())}); a saved "
            f"SlideTextModel folder ({model}) carries its own weights"
        )
    return SlideTextModel.load(model, map_location=device)


def _model_names() -> list[str]:
    from .published import list_published_models

    return list_published_models() + list_clip_text_towers()


def _load_model(
    model: ModelLike,
    device: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> SlideModel:
    net = _resolve_model(model, weights=weights, trust_remote_code=trust_remote_code, device=device)
    if isinstance(net, ClipTextTower) or net is None:
        raise InvalidParameterError(
            f"{getattr(net, 'name', model)!r} is a patch-level CLIP model: it has no slide "
            "encoder. Use zero_shot(..., level='tile') (MI-Zero) with it"
        )
    return net


def load_slide_model(
    model: ModelLike,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> SlideModel:
    """A slide-level text-aligned model, loaded: a :class:`SlideTextModel` (object or saved folder) or a published
    one by name (``"prism"``, ``"titan"``; ``weights`` and ``trust_remote_code`` as in
    :func:`~slidescope.vlm.published.load_published_model`).

    Returns
    -------
    SlideTextModel or PublishedSlideTextModel
        In eval mode on ``device``; both have ``encode_slide``, ``encode_text``, ``similarity`` and ``scale``.
    """
    return _load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)


def _default_encoder(net: object, encoder: str | None) -> str:
    if encoder is not None:
        return encoder
    if isinstance(net, PublishedSlideTextModel):
        return net.config.tile_encoders[0]
    if isinstance(net, ClipTextTower):
        return net.name
    raise InvalidParameterError(
        "give encoder=: the name of the tile embeddings in the stores that the model was "
        "pretrained on (e.g. encoder='he-descriptor')"
    )


def _stores(stores_or_paths: StoreLike | Sequence[StoreLike]) -> list[Location]:
    """Store locations (local paths or fsspec URL strings, folders expanded) of stores, paths or URLs."""
    items = (
        [stores_or_paths]
        if isinstance(stores_or_paths, (str, os.PathLike, SlideStore))
        else list(stores_or_paths)
    )
    if not items:
        raise InvalidParameterError("no stores given")
    return expand_stores([s.path if isinstance(s, SlideStore) else s for s in items])


def _slide_name(path: Location) -> str:
    name = location_name(path)
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def _tiles(store: SlideStore, encoder: str, context_dim: int) -> np.ndarray:
    emb = store.embeddings(encoder).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != context_dim:
        raise InvalidParameterError(
            f"{store.name}: {encoder!r} embeddings have {emb.shape[-1]} dimensions but "
            f"the model expects {context_dim}; use the encoder the model was pretrained on"
        )
    if len(emb) == 0:
        raise InvalidParameterError(f"{store.name} has no tiles for {encoder!r}")
    return emb


def slide_embeddings(
    stores_or_paths: StoreLike | Sequence[StoreLike],
    *,
    model: ModelLike,
    encoder: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    write: bool = True,
    name: str | None = None,
) -> tuple[list[Location], Tensor]:
    """Joint-space slide embeddings of every store.

    Parameters
    ----------
    stores_or_paths : store, path or list of them
        Slide stores (``<slide>.zarr``) or folders of stores.
    model : SlideTextModel, saved folder, or a published name (``"prism"``, ``"titan"``)
        The slide model; ``weights`` and ``trust_remote_code`` go to
        :func:`~slidescope.vlm.published.load_published_model` for a name.
    encoder : str, optional
        The stores' tile embeddings to use (default for a published model: the one it was trained on).
    write : bool
        Write each slide embedding into its store as ``slide_embeddings/<name>``: a SlideTextModel's joint-space
        embedding (default name ``slidetext-<encoder>``), a published model's own (raw) slide embedding (default
        name: the model's, e.g. ``prism``: 1280-d, the vector TRIDENT exports and linear probes use).

    Returns
    -------
    paths : list of Path or str
        The stores, folders expanded, in order.
    embeddings : Tensor (B, dim_latents)
        L2-normalised joint-space embeddings (what zero-shot compares with text).
    """
    net = _load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)
    encoder = _default_encoder(net, encoder)
    paths = _stores(stores_or_paths)
    joint, raw = [], []
    tiling_keys: list[str | None] = []  # the tiling of each store read (written back into the same one)
    with torch.inference_mode():
        for p in paths:
            store = open_store(p, encoder=encoder)
            tiling_keys.append(store.tiling_key)
            if isinstance(net, PublishedSlideTextModel):
                raw.append(net.embed_store(store, encoder))
            else:
                tiles = torch.from_numpy(_tiles(store, encoder, net.slide_encoder.config.context_dim)).to(
                    device
                )
                joint.append(net.encode_slide(tiles[None]).squeeze(0).float().cpu())
        if isinstance(net, PublishedSlideTextModel):
            stacked = torch.stack(raw)
            emb = net.project(stacked).float().cpu()
        else:
            stacked = emb = torch.stack(joint)
    if write:
        if isinstance(net, PublishedSlideTextModel):
            key = name or net.name
            attrs = {"encoder": encoder, "model": net.name, "hub_id": net.config.hub_id, "space": "slide"}
        else:
            key = name or f"slidetext-{encoder}"
            attrs = {"encoder": encoder, "model": "SlideTextModel", "space": "joint"}
        for p, v, tkey in zip(paths, stacked, tiling_keys, strict=True):
            SlideStore.open(p, mode="r+", tiling=tkey).write_slide_embedding(
                key, v.numpy(), attrs={**attrs, "dim": int(v.shape[0])}
            )
    return paths, emb


def stored_slide_embeddings(
    stores_or_paths: StoreLike | Sequence[StoreLike], name: str, *, model: SlideModel | None = None
) -> tuple[list[Location], Tensor]:
    """The slide embeddings ``slide_embeddings/<name>`` already in the stores, stacked: (B, D).

    With a published ``model`` the stored (raw) embeddings are projected into its joint space; a SlideTextModel's
    are stored in the joint space already. Re-scoring with new prompts then costs no slide encoding.
    """
    paths = _stores(stores_or_paths)
    emb = torch.from_numpy(
        np.stack([open_store(p, slide_embedding=name).slide_embedding(name) for p in paths]).astype(
            np.float32
        )
    )
    if isinstance(model, PublishedSlideTextModel):
        if emb.shape[1] != model.slide_dim:
            raise InvalidParameterError(
                f"slide embeddings {name!r} have {emb.shape[1]} dimensions but "
                f"{model.config.title} makes {model.slide_dim}"
            )
        with torch.inference_mode():
            emb = model.project(emb).float().cpu()
    elif isinstance(model, SlideTextModel) and emb.shape[1] != model.dim_latents:
        raise InvalidParameterError(
            f"slide embeddings {name!r} have {emb.shape[1]} dimensions but the model's joint "
            f"space has {model.dim_latents}; embed the slides with this model"
        )
    return paths, emb


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
            t = net.encode_text(prompts)  # type: ignore[union-attr]
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
        ``"quiltnet"`` (tile level only: its text tower scores the tiles its image tower embedded).
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
    names = prompts_obj.names
    if level is not None and level not in ("slide", "tile"):
        raise InvalidParameterError(f"level must be 'slide' or 'tile', got {level!r}")
    if pooling not in ("mean", "sum"):
        raise InvalidParameterError(
            f"pooling must be 'mean' or 'sum' (MI-Zero top-k pooling), got {pooling!r}"
        )
    if model is None and (level != "tile" or text_encoder is None):
        raise InvalidParameterError(
            "zero_shot needs model= (a saved SlideTextModel, 'prism', 'titan', 'plip' or "
            "'quiltnet'); only level='tile' with text_encoder= works on tile embeddings "
            "already in the text space"
        )
    net = _resolve_model(model, weights=weights, trust_remote_code=trust_remote_code, device=device)
    level = level or ("tile" if isinstance(net, ClipTextTower) or net is None else "slide")
    if isinstance(net, ClipTextTower) and level == "slide":
        raise InvalidParameterError(
            f"{net.name!r} is a patch-level CLIP model without a slide encoder: use "
            "level='tile' (MI-Zero pooling of its per-tile scores)"
        )
    if isinstance(net, PublishedSlideTextModel) and level == "tile":
        raise InvalidParameterError(
            f"{net.config.title} scores whole slides; per-tile maps need a patch-level CLIP "
            "model ('plip', 'quiltnet') or a SlideTextModel"
        )
    enc = encoder
    if not (level == "slide" and slide_embedding is not None):  # reading tiles: which embeddings?
        enc = _default_encoder(net, encoder) if net is not None else encoder
        if enc is None:
            raise InvalidParameterError("give encoder=: the tile embeddings to score")
    if ensemble is None:
        ensemble = net.ensemble if isinstance(net, PublishedSlideTextModel) else "mean-embedding"
    if logit_scale is not None:
        scale = float(logit_scale)
    elif isinstance(net, (SlideTextModel, PublishedSlideTextModel)):
        scale = float(net.scale().detach())
    elif isinstance(net, ClipTextTower):
        scale = float(net.logit_scale)
    else:
        scale = 100.0
    text = _text_classifier(net, prompts, text_encoder)
    paths = _stores(stores_or_paths)
    if level == "slide":
        if not isinstance(net, (SlideTextModel, PublishedSlideTextModel)):  # pragma: no cover - guarded above
            raise InvalidParameterError("slide-level zero-shot needs a slide model")
        if slide_embedding is not None:
            paths, emb = stored_slide_embeddings(paths, slide_embedding, model=net)
        else:
            paths, emb = slide_embeddings(
                paths,
                model=net,
                encoder=enc,  # type: ignore[arg-type]
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
            ZeroShotRow(slide=_slide_name(p), store=p, probs=dict(zip(names, map(float, row), strict=True)))
            for p, row in zip(paths, probs, strict=True)
        ]

    w = class_text_embeddings(text, prompt_class)  # (C, d)
    rows = []
    for p in paths:
        store = open_store(p, encoder=enc)
        if isinstance(net, SlideTextModel):
            z = tile_embeddings(store, model=net, encoder=enc, device=device)
        else:
            if isinstance(net, ClipTextTower):
                _check_same_weights(net, store, enc)
            z = torch.from_numpy(np.asarray(store.embeddings(enc), dtype=np.float32))
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
        rows.append(
            ZeroShotRow(
                slide=_slide_name(p), store=p, probs=dict(zip(names, map(float, res.probs), strict=True))
            )
        )
    return rows


def tile_embeddings(
    store: SlideStore | StoreLike,
    *,
    model: str | os.PathLike[str] | SlideTextModel,
    encoder: str,
    batch_size: int = 256,
    device: str = "cpu",
) -> Tensor:
    """Each tile encoded alone (a one-tile bag) by a SlideTextModel's slide encoder, into the joint space.

    Returns
    -------
    Tensor (N, dim_latents)
        L2-normalised, one row per tile in store order.
    """
    net = _load_model(model, device)
    if not isinstance(net, SlideTextModel):
        raise InvalidParameterError("tile_embeddings needs a SlideTextModel")
    st = store if isinstance(store, SlideStore) else open_store(store, encoder=encoder)
    tiles = torch.from_numpy(_tiles(st, encoder, net.slide_encoder.config.context_dim))
    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch_size):
            out.append(net.encode_slide(tiles[i : i + batch_size, None].to(device)).float().cpu())
    return torch.cat(out)


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
    net = _load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)
    if not isinstance(net, PrismModel):
        raise InvalidParameterError(
            "report generation needs PRISM (model='prism'): the other models ship no "
            "report decoder (TITAN's was removed from its release)"
        )
    enc = _default_encoder(net, encoder)
    rows = []
    for p in _stores(stores_or_paths):
        store = open_store(p, encoder=enc)
        net.check_store(store, enc)
        tiles = torch.from_numpy(np.asarray(store.embeddings(enc), dtype=np.float32))
        report = net.generate_reports(tiles[None], num_beams=num_beams, max_length=max_length)[0]
        rows.append({"slide": _slide_name(p), "report": report})
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


def _embed(
    stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    net: SlideModel,
    encoder: str,
    device: str,
    write: bool,
) -> tuple[list[str], Tensor]:
    if isinstance(stores, (Tensor, np.ndarray)):
        x = torch.as_tensor(stores).float()
        if x.ndim != 2 or x.shape[1] != net.dim_latents:
            raise InvalidParameterError(
                f"slide embeddings must have shape (B, {net.dim_latents}) to match the model, "
                f"got {tuple(x.shape)}"
            )
        return [str(i) for i in range(len(x))], x
    paths, emb = slide_embeddings(stores, model=net, encoder=encoder, device=device, write=write)
    return [_slide_name(p) for p in paths], emb


def few_shot(
    train_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    train_labels: Sequence[str],
    test_stores: StoreLike | Sequence[StoreLike] | Tensor | np.ndarray,
    *,
    model: ModelLike,
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
    encoder : str, optional
        The tile embeddings to read (default for published models: the one they need).
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
    net = _load_model(model, device, weights=weights, trust_remote_code=trust_remote_code)
    encoder = _default_encoder(net, encoder)
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
    x_val = y_val = None
    if (val_stores is None) != (val_labels is None):
        raise InvalidParameterError(
            "give both val_stores and val_labels (validation slides and their classes)"
        )
    if val_stores is not None:
        _, x_val = _embed(val_stores, net, encoder, device, write)
        vl = [str(v) for v in val_labels]  # type: ignore[union-attr]
        if len(vl) != len(x_val):
            raise InvalidParameterError(f"{len(vl)} validation labels for {len(x_val)} validation slides")
        bad_val = sorted(set(vl) - set(names))
        if bad_val:
            raise InvalidParameterError(f"validation labels {bad_val} are not among the classes {names}")
        y_val = torch.tensor([names.index(v) for v in vl])
    x_base = _embed(base_stores, net, encoder, device, write)[1] if base_stores is not None else None
    zs_train = zs_test = zs_val = None
    if prompts_obj is not None and method in ("gda", "tip-adapter"):
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
    c = len(names)
    if method == "linear":
        clf = linear_probe(x_train, y, X_val=x_val, y_val=y_val, n_classes=c, seed=seed)
    elif method == "simpleshot":
        clf = simpleshot(x_train, y, X_base=x_base, n_classes=c)
    elif method == "simpleshot-cosine":
        clf = simpleshot_cosine(x_train, y, n_classes=c)
    elif method == "knn":
        clf = knn(x_train, y, k=min(k, len(x_train)), n_classes=c)
    elif method == "gda":
        clf = gda(
            x_train,
            y,
            zs=zs_train,
            X_val=x_val if zs_val is not None else None,
            y_val=y_val if zs_val is not None else None,
            zs_val=zs_val,
            n_classes=c,
        )
    else:
        clf = tip_adapter(x_train, y, zs=zs_train, X_val=x_val, y_val=y_val, zs_val=zs_val, n_classes=c)
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
        tl = [str(v) for v in test_labels]
        if len(tl) != len(x_test):
            raise InvalidParameterError(f"{len(tl)} test labels for {len(x_test)} test slides")
        bad = sorted(set(tl) - set(names))
        if bad:
            raise InvalidParameterError(f"test labels {bad} are not among the classes {names}")
        yt = np.array([names.index(v) for v in tl])
        for metric in ("auroc", "accuracy", "balanced_accuracy"):
            ci = bootstrap_ci(yt, probs.numpy(), metric, n=n_bootstrap, seed=seed)
            if np.isnan(ci.estimate):  # undefined, e.g. AUROC with one class among the test slides
                log.warning("few_shot: %s not computed: undefined on these test labels", metric)
            else:
                result.metrics[metric] = ci
    return result
