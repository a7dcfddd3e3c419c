"""The slide-encoder contract as plain data: :class:`SlideEncoderConfig` (importing it loads no torch).

A slide encoder turns one slide's tile embeddings ``(N, D)`` (with their level-0 coordinates ``(N, 2)`` and
the level-0 side of one tile, for the models that read positions) into one slide embedding ``(E,)``. It was
trained on the embeddings of one patch encoder at one tile geometry; :meth:`SlideEncoderConfig.check_store`
refuses a store made another way, before anything is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InvalidParameterError

__all__ = ["SlideEncoderConfig", "MPP_TOLERANCE"]

#: how far a store's tiling mpp may be from the model's (µm/px): the grid's effective mpp is rounded
MPP_TOLERANCE = 0.05


@dataclass(frozen=True)
class SlideEncoderConfig:
    """What slidescope knows about a slide encoder, as data.

    Attributes
    ----------
    name : str
        Registry name (``"feather-uni2"``, ``"madeleine"``, ``"mean"``...).
    family : str
        The architecture (``"mean"``, ``"abmil-mil-lab"``, ``"madeleine"``, ``"chief"``, ``"published"``).
    embed_dim : int or None
        Length of the slide embedding; None: the patch embedding's own width (mean pooling).
    patch_encoders : tuple of str
        Store encoder names whose tile embeddings the model was trained on; empty: any encoder.
    patch_dim : int or None
        Width of those tile embeddings (None: any).
    tile_size, mpp : int or None, float or None
        The tiling the tile embeddings must come from (``tile_size`` px at ``mpp`` µm/px); None: any.
    needs_coords : bool
        The model reads the tiles' level-0 coordinates and the level-0 tile side.
    hub_id, weights_file : str or None
        Where the published weights live (Hugging Face repository and file); None: no hub copy
        (``weights=`` is then required) or no weights at all.
    weights_url : str
        The page the weights come from (for the messages and the README).
    license, license_url, gated : str, str, bool
        Terms of the weights (not of slidescope).
    requires_remote_code : bool
        The model is built by its publisher's code from the hub repository (PRISM, TITAN).
    layout : str
        How the state-dict layout this config builds is known: ``"derived: ..."`` (built by the publisher's
        code and checked against ours, tests/golden/trident_slide_layouts.json), ``"read: ..."`` (from the
        published file itself), ``"publisher's code"`` (loaded by that code), ``"no weights"``.
    n_params : int or None
        Parameters of the full-size model (None: no weights or loaded by the publisher's code).
    weight_free : bool
        The model has no weights (mean pooling).
    patient_level : bool
        The model also defines a patient embedding from several slides (else patients are the mean of
        their slides' embeddings: :func:`~slidescope.features.slide_encoders.pool_patients`).
    kwargs : dict
        Constructor arguments of the architecture (the published sizes).
    description : str
        One line for ``slidescope encoders``.
    """

    name: str
    family: str
    embed_dim: int | None
    patch_encoders: tuple[str, ...] = ()
    patch_dim: int | None = None
    tile_size: int | None = None
    mpp: float | None = None
    needs_coords: bool = False
    hub_id: str | None = None
    weights_file: str | None = None
    weights_url: str = ""
    license: str = "unknown"
    license_url: str = ""
    gated: bool = False
    requires_remote_code: bool = False
    layout: str = ""
    n_params: int | None = None
    patient_level: bool = False
    weight_free: bool = False
    kwargs: tuple[tuple[str, Any], ...] = ()
    description: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """``kwargs`` as a dict."""
        return dict(self.kwargs)

    def geometry(self) -> str:
        """``"512 px at 0.5 µm/px"`` (or ``"any tiling"``)."""
        if self.tile_size is None or self.mpp is None:
            return "any tiling"
        return f"{self.tile_size} px at {self.mpp:g} µm/px"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the attributes of stored slide embeddings."""
        out = asdict(self)
        out["kwargs"] = dict(self.kwargs)
        out["patch_encoders"] = list(self.patch_encoders)
        return out

    def output_dim(self, patch_dim: int) -> int:
        """The slide embedding's width for tile embeddings of width ``patch_dim``."""
        return int(self.embed_dim) if self.embed_dim is not None else int(patch_dim)

    # ------------------------------------------------------------------------------------ the store
    def how_to_extract(self) -> str:
        if not self.patch_encoders:
            return "extract tile embeddings with `slidescope extract`"
        enc = self.patch_encoders[0]
        size = f" --tile-size {self.tile_size} --mpp {self.mpp:g}" if self.tile_size is not None else ""
        return f"extract them with `slidescope extract --encoder {enc}{size}`"

    def check_store(self, store: Any, encoder: str) -> None:
        """Refuse ``store`` when its ``encoder`` embeddings are not what this model was trained on.

        Parameters
        ----------
        store : SlideStore
            An opened store (:func:`~slidescope.features.open_store`).
        encoder : str
            The patch encoder whose embeddings would be read.

        Raises
        ------
        InvalidParameterError
            Another patch encoder, another width or another tiling than the model's (the message says which
            extraction gives the right one), or a store without tiles.
        """
        name = getattr(store, "name", str(store))
        how = self.how_to_extract()
        if self.patch_encoders and encoder not in self.patch_encoders:
            wanted = " or ".join(repr(e) for e in self.patch_encoders)
            raise InvalidParameterError(
                f"{name}: slide encoder {self.name!r} was trained on {wanted} tile embeddings "
                f"({self.patch_dim}-d, {self.geometry()}), not {encoder!r}; {how}."
            )
        attrs = store.encoder_attrs(encoder)
        dim = attrs.get("embed_dim")
        if self.patch_dim is not None and dim is not None and int(dim) != self.patch_dim:
            raise InvalidParameterError(
                f"{name}: the {encoder!r} embeddings have {dim} dimensions but slide encoder {self.name!r} "
                f"takes {self.patch_dim}; {how}."
            )
        tiling = store.attrs.get("tiling") or {}
        size, mpp = tiling.get("tile_size"), tiling.get("mpp")
        if self.tile_size is not None and self.mpp is not None:
            if size is None or mpp is None:
                raise InvalidParameterError(
                    f"{name} does not record its tiling, so slide encoder {self.name!r} ({self.geometry()}) "
                    f"cannot check it; {how}."
                )
            if int(size) != self.tile_size or abs(float(mpp) - self.mpp) > MPP_TOLERANCE:
                raise InvalidParameterError(
                    f"{name} was tiled at {size} px / {float(mpp):g} µm/px but slide encoder {self.name!r} was "
                    f"trained on {self.geometry()}; {how}."
                )
        if store.n_tiles == 0:
            raise InvalidParameterError(f"{name} has no tiles: a slide embedding needs at least one")
