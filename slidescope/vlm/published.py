"""Published slide-level vision-language models: PRISM (Paige) and TITAN (Mahmood Lab).

Both publishers ship their model code inside the Hugging Face repository (``trust_remote_code``): slidescope
loads the repository (hub id with the user's token and cache, or a local directory) with
``transformers.AutoModel.from_pretrained(..., trust_remote_code=True, local_files_only=True)`` and wraps it in
an adapter that speaks :class:`~slidescope.vlm.model.SlideTextModel`'s language, so
:func:`~slidescope.vlm.api.zero_shot` and :func:`~slidescope.vlm.api.few_shot` work on them unchanged.
Running downloaded code needs an explicit ``trust_remote_code=True`` (CLI ``--trust-remote-code``); without
it the loader stops before touching the network or the files. Plugins add models through the
``slidescope.slide_models`` entry points (docs/PLUGINS.md).

Only the publishers' public methods are called, exactly as their model cards do (``docs/REFERENCE-models.md``
§1.3, §2.3):

=========  =============================================================================================
PRISM      tiles: Virchow (v1) CLS + mean patch token, 2560-d, 224 px at 0.5 µm/px.
           slide: ``slide_representations(tiles, tile_mask)["image_embedding"]`` (1280-d);
           joint space: ``img_to_latents`` (L2-normalised); text: ``tokenize(texts)[:, :-1]`` through
           ``text_decoder`` (CLS state at the last unimodal layer) then ``text_to_latents``;
           scale ``exp(temperature)``; prompts ensembled by summing probabilities (``Prism.zero_shot``);
           reports: ``generate(key_value_states=image_latents)`` + ``untokenize``.
TITAN      tiles: CONCH v1.5, 768-d, 512 px at 0.5 µm/px, with their level-0 coordinates.
           slide: ``encode_slide_from_patch_features(features, coords, patch_size_lv0)`` (768-d);
           joint space: ``normalize(z @ vision_encoder.proj)``; text: ``encode_text(tokenizer(texts),
           normalize=True)``; prompt embeddings averaged per class; no logit scale
           (``Titan.zero_shot`` is a plain softmax of cosines: scale 1).
=========  =============================================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._plugins import load_plugins
from ..errors import InvalidParameterError, MissingDependencyError, SlidescopeError
from ..features.encoders import WeightsError

log = logging.getLogger(__name__)

__all__ = [
    "RemoteCodeError",
    "PublishedModelConfig",
    "PublishedSlideTextModel",
    "PrismModel",
    "TitanModel",
    "PRISM",
    "TITAN",
    "register_published_model",
    "list_published_models",
    "get_published_config",
    "is_published_model",
    "load_published_model",
]


class RemoteCodeError(SlidescopeError):
    """A published model needs its publisher's code and the caller did not opt in to running it."""


@dataclass(frozen=True)
class PublishedModelConfig:
    """What slidescope knows about a published slide-level model, as data.

    Attributes
    ----------
    name : str
        Registry name (``"prism"``, ``"titan"``).
    hub_id : str
        Hugging Face repository holding config, code and weights.
    license, license_url : str
        Terms of the weights; ``gated`` when the hub asks to accept them first.
    requires_remote_code : bool
        The repository's own modelling code must run (``trust_remote_code=True``).
    tile_encoders : tuple of str
        Store encoders whose tile embeddings the model was trained on.
    tile_dim, tile_size, mpp : int, int, float
        Their length, and the tiling they must come from (``tile_size`` px at ``mpp`` µm/px).
    needs_coords : bool
        The slide encoder also reads the tiles' level-0 coordinates and extent.
    embed_dim : int
        Length of the (raw) slide embedding the model returns.
    ensemble : {"mean-embedding", "sum-probability"}
        How the publisher combines several prompts of one class.
    logit_scale : float or None
        Fixed multiplier of cosines before the softmax; ``None``: the model's learned one.
    packages : tuple of str
        Python packages the publisher's code imports beyond torch/transformers.
    """

    name: str
    hub_id: str
    license: str
    license_url: str
    gated: bool
    requires_remote_code: bool
    tile_encoders: tuple[str, ...]
    tile_dim: int
    tile_size: int
    mpp: float
    needs_coords: bool
    embed_dim: int
    ensemble: Literal["mean-embedding", "sum-probability"]
    logit_scale: float | None
    packages: tuple[str, ...] = ()
    description: str = ""

    @property
    def title(self) -> str:
        return f"{self.name.upper()} ({self.hub_id})"

    def licence_hint(self) -> str:
        gate = (
            f" The repository is gated: accept its terms on https://huggingface.co/{self.hub_id} and log in "
            f"(`hf auth login` or HF_TOKEN)."
            if self.gated
            else ""
        )
        return (
            f" Licence: {self.license} ({self.license_url}).{gate} Or download the repository once "
            f"(`hf download {self.hub_id} --local-dir DIR`) and pass weights=DIR / `--weights DIR`."
        )


PRISM = PublishedModelConfig(
    name="prism",
    hub_id="paige-ai/Prism",
    license="CC-BY-NC-ND-4.0",
    license_url="https://huggingface.co/paige-ai/Prism",
    gated=True,
    requires_remote_code=True,
    tile_encoders=("virchow",),
    tile_dim=2560,
    tile_size=224,
    mpp=0.5,
    needs_coords=False,
    embed_dim=1280,
    ensemble="sum-probability",
    logit_scale=None,
    packages=("environs", "sacremoses"),
    description="PRISM (Shaikovski et al. 2024): Perceiver slide encoder over Virchow (v1) tile embeddings + "
    "BioGPT report decoder, CoCa-trained on 587k slides with their reports; 1280-d slide embedding, zero-shot "
    "by prompts and report generation.",
)

TITAN = PublishedModelConfig(
    name="titan",
    hub_id="MahmoodLab/TITAN",
    license="CC-BY-NC-ND-4.0",
    license_url="https://huggingface.co/MahmoodLab/TITAN",
    gated=True,
    requires_remote_code=True,
    tile_encoders=("conch-v1.5",),
    tile_dim=768,
    tile_size=512,
    mpp=0.5,
    needs_coords=True,
    embed_dim=768,
    ensemble="mean-embedding",
    logit_scale=1.0,
    packages=("einops", "einops_exts"),
    description="TITAN (Ding et al. 2024): ViT with 2-D ALiBi over the grid of CONCH v1.5 features of 512 px "
    "tiles at 20x, aligned with ROI captions and reports; 768-d slide embedding, zero-shot by prompts.",
)

_REGISTRY: dict[str, tuple[PublishedModelConfig, type[PublishedSlideTextModel]]] = {}


def register_published_model(config: PublishedModelConfig, adapter: type[PublishedSlideTextModel]) -> None:
    """Register a published model under ``config.name`` with the adapter class that wraps it."""
    if config.name in _REGISTRY:
        log.warning("published model %r registered twice; the later one wins", config.name)
    _REGISTRY[config.name] = (config, adapter)


def _models() -> dict[str, tuple[PublishedModelConfig, type[PublishedSlideTextModel]]]:
    """The registry, after the ``slidescope.slide_models`` entry points (plugins) have registered theirs."""
    load_plugins("slide_models")
    return _REGISTRY


def list_published_models() -> list[str]:
    """Names of the registered published slide models (built-in and plugins'), sorted."""
    return sorted(_models())


def is_published_model(name: object) -> bool:
    """True when ``name`` is a registered published slide-model name."""
    return isinstance(name, str) and name in _models()


def get_published_config(name: str) -> PublishedModelConfig:
    """The :class:`PublishedModelConfig` of ``name``."""
    if name not in _models():
        raise InvalidParameterError(f"unknown published slide model {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name][0]


class PublishedSlideTextModel(nn.Module):
    """A loaded published model behind :class:`~slidescope.vlm.model.SlideTextModel`'s interface.

    Parameters
    ----------
    model : nn.Module
        The model ``transformers`` built from the repository (publisher's code).
    config : PublishedModelConfig
        Its registry entry.
    source : Path
        The directory it was loaded from.

    Attributes
    ----------
    dim_latents : int
        Width of the joint slide-text space.
    ensemble : str
        The publisher's prompt ensembling (default of :func:`~slidescope.vlm.api.zero_shot`).
    """

    config: PublishedModelConfig
    kind: ClassVar[str] = "published"

    def __init__(self, model: nn.Module, config: PublishedModelConfig, source: Path) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.source = Path(source)
        self.ensemble = config.ensemble

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim_latents(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def slide_dim(self) -> int:  # pragma: no cover - abstract
        """Length of the raw slide embedding of the loaded model (PRISM 1280, TITAN 768 at full size)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the SlideTextModel interface

    def embed_tiles(
        self, tiles: Tensor, *, coords: Tensor | None = None, tile_extent: int | None = None
    ) -> Tensor:
        """One slide's raw embedding ``(embed_dim,)`` from its tiles ``(N, tile_dim)``."""
        raise NotImplementedError  # pragma: no cover

    def project(self, slide_emb: Tensor) -> Tensor:
        """Raw slide embeddings ``(B, embed_dim)`` -> L2-normalised joint-space ``(B, dim_latents)``."""
        raise NotImplementedError  # pragma: no cover

    def encode_slide(
        self,
        tiles: Tensor,
        mask: Tensor | None = None,
        *,
        coords: Tensor | None = None,
        tile_extent: int | None = None,
    ) -> Tensor:
        """Normalised joint-space slide embeddings.

        Parameters
        ----------
        tiles : Tensor (B, N, tile_dim)
            Tile embeddings, each bag padded to ``N``.
        mask : bool Tensor (B, N), optional
            True for real tiles.
        coords : int Tensor (B, N, 2), optional
            Level-0 top-left ``(x, y)`` of the tiles (TITAN).
        tile_extent : int, optional
            Level-0 side of one tile (TITAN's ``patch_size_lv0``).

        Returns
        -------
        Tensor (B, dim_latents)
        """
        if tiles.ndim != 3:
            raise InvalidParameterError(
                f"tiles must have shape (B, N, {self.config.tile_dim}), got {tuple(tiles.shape)}"
            )
        rows = []
        for b in range(tiles.shape[0]):
            keep = mask[b].bool() if mask is not None else slice(None)
            rows.append(
                self.embed_tiles(
                    tiles[b][keep],
                    coords=coords[b][keep] if coords is not None else None,
                    tile_extent=tile_extent,
                )
            )
        return self.project(torch.stack(rows))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Normalised joint-space text embeddings ``(P, dim_latents)``."""
        raise NotImplementedError  # pragma: no cover

    def scale(self) -> Tensor:
        """The multiplier of cosine similarities in the publisher's zero-shot softmax."""
        raise NotImplementedError  # pragma: no cover

    def similarity(self, slide_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Scaled cosine logits ``(B_slide, B_text)`` between normalised embeddings."""
        return self.scale() * slide_emb @ text_emb.T

    # ------------------------------------------------------------------------------- stores

    def check_store(self, store: Any, encoder: str) -> None:
        """Refuse a store whose tile embeddings are not what the model was trained on (a clear error)."""
        cfg = self.config
        wanted = " or ".join(cfg.tile_encoders)
        how = f"extract them with `slidescope extract --encoder {cfg.tile_encoders[0]}` (its default tiling)"
        if encoder not in cfg.tile_encoders:
            extra = (
                " PRISM was trained on Virchow (v1) tile embeddings; Virchow2's 2560-d embeddings live in "
                "another space (Paige's Prism2 consumes those)."
                if encoder == "virchow2" and cfg.name == "prism"
                else ""
            )
            raise InvalidParameterError(
                f"{store.name}: {cfg.title} needs {wanted} tile embeddings ({cfg.tile_dim}-d, {cfg.tile_size} px "
                f"at {cfg.mpp} µm/px), not {encoder!r}.{extra} {how[0].upper() + how[1:]}."
            )
        attrs = store.encoder_attrs(encoder)
        dim = int(attrs.get("embed_dim", cfg.tile_dim))
        if dim != cfg.tile_dim:
            raise InvalidParameterError(
                f"{store.name}: {encoder!r} embeddings have {dim} dimensions but "
                f"{cfg.title} expects {cfg.tile_dim}; {how}"
            )
        tiling = store.attrs.get("tiling", {})
        size, mpp = tiling.get("tile_size"), tiling.get("mpp")
        if (
            size is not None
            and mpp is not None
            and (int(size) != cfg.tile_size or abs(float(mpp) - cfg.mpp) > 0.05)
        ):
            raise InvalidParameterError(
                f"{store.name} was tiled at {size} px / {mpp} µm/px but {cfg.title} was trained on "
                f"{cfg.tile_size} px tiles at {cfg.mpp} µm/px; {how}"
            )
        if store.n_tiles == 0:
            raise InvalidParameterError(f"{store.name} has no tiles")

    def embed_store(self, store: Any, encoder: str) -> Tensor:
        """The raw slide embedding ``(embed_dim,)`` of one store (validated first)."""
        self.check_store(store, encoder)
        tiles = torch.from_numpy(np.asarray(store.embeddings(encoder), dtype=np.float32)).to(self.device)
        coords = extent = None
        if self.config.needs_coords:
            coords = torch.from_numpy(store.coords).to(self.device)
            extent = int(store.tile_extent[0])
        with torch.inference_mode():
            return self.embed_tiles(tiles, coords=coords, tile_extent=extent).float().cpu()


class PrismModel(PublishedSlideTextModel):
    """PRISM behind the slide-text interface, plus :meth:`generate_reports`.

    Examples
    --------
    >>> prism = load_published_model("prism", weights="Prism/", trust_remote_code=True)  # doctest: +SKIP
    >>> v = prism.encode_slide(tiles)                 # tiles (1, N, 2560) -> (1, dim_latents)  # doctest: +SKIP
    >>> t = prism.encode_text(["invasive ductal carcinoma", "benign breast tissue"])            # doctest: +SKIP
    >>> prism.similarity(v, t).softmax(-1)                                                        # doctest: +SKIP
    """

    @property
    def dim_latents(self) -> int:
        return int(self.model.img_to_latents.to_latents.out_features)

    @property
    def slide_dim(self) -> int:
        return int(self.model.img_to_latents.to_latents.in_features)

    def embed_tiles(
        self, tiles: Tensor, *, coords: Tensor | None = None, tile_extent: int | None = None
    ) -> Tensor:
        _check_tiles(tiles, self.config)
        reprs = self.model.slide_representations(tiles[None].to(self.device, torch.float32))
        return reprs["image_embedding"][0]

    def project(self, slide_emb: Tensor) -> Tensor:
        return F.normalize(
            self.model.img_to_latents(slide_emb.to(self.device, torch.float32)).float(), dim=-1
        )

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Normalised joint-space text embeddings ``(P, dim_latents)``, computed as ``Prism.zero_shot`` does.

        The texts are tokenised together (padded to the longest, then the last column dropped), so, as in PRISM,
        a text's embedding can depend on the batch it is encoded with: encode all prompts of a task in one call.
        """
        texts = _check_texts(texts)
        # Prism.zero_shot: drop the last token, read the CLS state before any cross-attention (so the image
        # latents do not matter: a one-token dummy context), project with text_to_latents
        ids = self.model.tokenize(texts)[:, :-1].to(self.device)
        dummy = torch.zeros(len(texts), 1, self.model.text_decoder.context_dim, device=self.device)
        out = self.model.text_decoder(ids, dummy)
        return F.normalize(self.model.text_to_latents(out["text_embedding"]).float(), dim=-1)

    def scale(self) -> Tensor:
        return self.model.temperature.detach().float().exp()

    def generate_reports(
        self, tiles: Tensor, mask: Tensor | None = None, *, num_beams: int = 5, max_length: int = 100
    ) -> list[str]:
        """Report text for each slide, generated by PRISM's BioGPT decoder from its image latents.

        Parameters
        ----------
        tiles : Tensor (B, N, 2560)
            Virchow tile embeddings, padded; ``mask`` (B, N) marks the real ones.
        num_beams : int
            Beam width (the model card uses 5; 1 is greedy decoding).
        max_length : int
            Longest report in tokens.

        Returns
        -------
        list of str
            One report per slide, special tokens removed.
        """
        if num_beams < 1 or max_length < 2:
            raise InvalidParameterError("num_beams must be >= 1 and max_length >= 2")
        reports = []
        for b in range(tiles.shape[0]):
            keep = mask[b].bool() if mask is not None else slice(None)
            t = tiles[b][keep]
            _check_tiles(t, self.config)
            with torch.inference_mode():
                latents = self.model.slide_representations(t[None].to(self.device, torch.float32))[
                    "image_latents"
                ]
                ids = self.model.generate(
                    key_value_states=latents,
                    do_sample=False,
                    num_beams=num_beams,
                    num_beam_groups=1,
                    max_length=max_length,
                )
            reports.append(_clean_report(self.model.untokenize(ids)[0], self.model.text_decoder.tokenizer))
        return reports


class TitanModel(PublishedSlideTextModel):
    """TITAN behind the slide-text interface.

    Examples
    --------
    >>> titan = load_published_model("titan", weights="TITAN/", trust_remote_code=True)  # doctest: +SKIP
    >>> z = titan.embed_tiles(features, coords=coords, tile_extent=1024)  # (N, 768), (N, 2) -> (768,)
    ...                                                                      # doctest: +SKIP
    >>> titan.project(z[None]) @ titan.encode_text(["lung adenocarcinoma."]).T            # doctest: +SKIP
    """

    @property
    def dim_latents(self) -> int:
        return int(self.model.vision_encoder.proj.shape[1])

    @property
    def slide_dim(self) -> int:
        return int(self.model.vision_encoder.proj.shape[0])

    def embed_tiles(
        self, tiles: Tensor, *, coords: Tensor | None = None, tile_extent: int | None = None
    ) -> Tensor:
        _check_tiles(tiles, self.config)
        if coords is None or tile_extent is None:
            raise InvalidParameterError(
                "TITAN needs the tiles' level-0 coords (N, 2) and tile_extent (the level-0 "
                "side of one tile, patch_size_lv0)"
            )
        if coords.shape != (tiles.shape[0], 2):
            raise InvalidParameterError(
                f"coords must have shape ({tiles.shape[0]}, 2), got {tuple(coords.shape)}"
            )
        z = self.model.encode_slide_from_patch_features(
            tiles[None].to(self.device, torch.float32),
            coords[None].to(self.device, torch.long),
            int(tile_extent),
        )
        return z.reshape(-1)

    def project(self, slide_emb: Tensor) -> Tensor:
        proj = self.model.vision_encoder.proj
        return F.normalize(slide_emb.to(proj.device, torch.float32) @ proj.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        texts = _check_texts(texts)
        ids = self.model.text_encoder.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(ids, normalize=True).float(), dim=-1)

    def scale(self) -> Tensor:
        return torch.tensor(float(self.config.logit_scale or 1.0))


register_published_model(PRISM, PrismModel)
register_published_model(TITAN, TitanModel)


# -------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _transformers_quiet(progress: bool) -> Iterator[None]:
    from transformers.utils import logging as tlog

    was = tlog.is_progress_bar_enabled()
    if not progress:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was and not progress:
            tlog.enable_progress_bar()


def _resolve_source(
    cfg: PublishedModelConfig,
    weights: str | os.PathLike[str] | None,
    *,
    token: str | bool | None,
    revision: str | None,
) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_dir():
            raise WeightsError(
                f"{cfg.title}: {path} is not a directory. Pass the folder of a downloaded copy of the "
                f"repository (config.json, code, weights, tokenizer).{cfg.licence_hint()}"
            )
        if not (path / "config.json").is_file():
            raise WeightsError(
                f"{cfg.title}: {path} has no config.json, so it is not a copy of {cfg.hub_id}."
                f"{cfg.licence_hint()}"
            )
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface-hub is a core dependency
        raise MissingDependencyError(
            "huggingface-hub is not installed: `uv pip install huggingface-hub`"
        ) from err
    try:
        return Path(snapshot_download(cfg.hub_id, revision=revision, token=token))
    except Exception as err:  # offline, gated (401/403), missing repo or revision: one actionable message
        raise WeightsError(
            f"could not get {cfg.title} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}).{cfg.licence_hint()}"
        ) from err


def load_published_model(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    token: str | bool | None = None,
    revision: str | None = None,
    progress: bool = False,
) -> PublishedSlideTextModel:
    """Load a published slide model (PRISM, TITAN) and wrap it for slidescope's zero-shot and few-shot API.

    Parameters
    ----------
    name : {"prism", "titan"}
        A name from :func:`list_published_models`.
    weights : path, optional
        A local copy of the hub repository (``hf download paige-ai/Prism --local-dir DIR``). ``None`` fetches it
        from the hub with your token and cache (the repositories are gated: accept their terms first).
    trust_remote_code : bool
        Both repositories hold their own modelling code, which must run to build the model. slidescope never runs
        downloaded code unless this is True; read the ``.py`` files of the repository first.
    device : str or torch.device
        Where the model runs.
    token, revision : optional
        Passed to ``huggingface_hub.snapshot_download`` (pin a ``revision`` to fix the code you reviewed).
    progress : bool
        Show transformers' weight-loading progress bar.

    Returns
    -------
    PublishedSlideTextModel
        :class:`PrismModel` or :class:`TitanModel`, in eval mode.

    Raises
    ------
    RemoteCodeError
        ``trust_remote_code`` is False.
    WeightsError
        The repository is unreachable (offline, gated, wrong revision), ``weights`` is not a copy of it, or its
        weights do not fit its own config (missing / unexpected / mis-shaped tensors are named).
    MissingDependencyError
        The publisher's code imports a package that is not installed.

    Examples
    --------
    >>> from slidescope.vlm import load_published_model
    >>> load_published_model("prism")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    slidescope.vlm.published.RemoteCodeError: PRISM (paige-ai/Prism) is built by the modelling code ...
    """
    cfg = get_published_config(name)
    adapter = _REGISTRY[name][1]
    if cfg.requires_remote_code and trust_remote_code is not True:
        where = str(weights) if weights is not None else f"https://huggingface.co/{cfg.hub_id}/tree/main"
        raise RemoteCodeError(
            f"{cfg.title} is built by the modelling code its publisher ships in the repository (the *.py files at "
            f"{where}), which transformers would execute. slidescope runs downloaded code only when you opt in: "
            f"review those files, then pass trust_remote_code=True (CLI: --trust-remote-code)."
        )
    source = _resolve_source(cfg, weights, token=token, revision=revision)
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - a core dependency
        raise MissingDependencyError("transformers is not installed: `uv pip install transformers`") from err
    try:
        with _transformers_quiet(progress):
            model, info = transformers.AutoModel.from_pretrained(
                str(source), trust_remote_code=True, local_files_only=True, output_loading_info=True
            )
    except ImportError as err:
        raise MissingDependencyError(
            f"{cfg.title}'s modelling code needs packages that are not installed ({err}). The publisher's code "
            f"imports {', '.join(cfg.packages) or 'extra packages'}: "
            f"`uv pip install {' '.join(cfg.packages)}`."
        ) from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise WeightsError(f"could not load {cfg.title} from {source}: {err}.{cfg.licence_hint()}") from err
    except (TypeError, AttributeError, NameError) as err:  # the publisher's code vs this transformers version
        raise SlidescopeError(
            f"{cfg.title}'s own modelling code failed to build the model under transformers {transformers.__version__} "
            f"({type(err).__name__}: {err}). Its publisher wrote it for older transformers releases (TRIDENT pins "
            f"transformers==4.42.4 for PRISM); run it in an environment with such a version, or pin the repository "
            f"revision that matches yours."
        ) from err
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind, ()))
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise WeightsError(
            f"the weights in {source} do not fit {cfg.title}'s architecture: {'; '.join(problems)}. "
            f"Download the repository again (a partial or foreign file gives this error)."
        )
    wrapped = adapter(model, cfg, source)
    return wrapped.to(device).eval()


# ------------------------------------------------------------------------------------------- helpers


def _check_tiles(tiles: Tensor, cfg: PublishedModelConfig) -> None:
    if tiles.ndim != 2 or tiles.shape[-1] != cfg.tile_dim:
        raise InvalidParameterError(
            f"{cfg.title} takes tile embeddings of shape (N, {cfg.tile_dim}) "
            f"({' or '.join(cfg.tile_encoders)}), got {tuple(tiles.shape)}"
        )
    if tiles.shape[0] == 0:
        raise InvalidParameterError(f"{cfg.title} got a slide with no tiles")


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidParameterError(
            "encode_text() takes a list of texts, got a single str; wrap it in a list"
        )
    out = [str(t) for t in texts]
    if not out:
        raise InvalidParameterError("encode_text() got an empty list of texts")
    return out


def _clean_report(text: str, tokenizer: Any) -> str:
    """Remove special tokens (BOS/EOS ``</s>``, padding) and collapse whitespace."""
    specials: list[str] = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    for tok in sorted(set(specials), key=len, reverse=True):
        text = text.replace(tok, " ")
    return re.sub(r"\s+", " ", text).strip()
