"""The fields of the Analyse widget's "Slide encoder + few-shot" model (see :mod:`._slide_model`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, Label

from ._slide_model import (
    DEFAULT_METHOD,
    FEW_SHOT_METHODS,
    FewShotRequest,
    required_encoder,
    slide_encoder_names,
)

__all__ = ["FEW_SHOT", "SlideModelFields"]

FEW_SHOT = "Slide encoder + few-shot"
#: what the status line says after a few-shot run
NO_TILE_MAP = (
    "the slide's class probabilities are in the Slide line; a slide encoder gives one prediction for the "
    "slide, no per-tile map"
)


def _slide_encoder_choices(_widget: Any = None) -> list[str]:
    return slide_encoder_names()


def _path(value: Any) -> Path | None:
    """A FileEdit's value (a path, or None when empty)."""
    return Path(value) if value else None


class SlideModelFields:
    """Slide encoder, its weights, the support set (labels CSV, store folder) and the few-shot method.

    Picking a slide encoder trained on one patch encoder sets the widget's Encoder to it (``set_encoder``)
    and says so in the note under the slide encoder.
    """

    def __init__(self, set_encoder: Callable[[str], None]) -> None:
        self._set_encoder = set_encoder
        self.slide_encoder = ComboBox(
            label="Slide encoder",
            choices=_slide_encoder_choices,
            value="mean",
            tooltip="A slide encoder from `slidescope encoders`: the slide's tile embeddings -> one slide "
            "embedding (mean: their average, any encoder, no weights).",
        )
        self.note = Label(label="", value="")
        self.note.native.setWordWrap(True)
        self.weights = FileEdit(
            label="Slide encoder weights",
            mode=FileDialogMode.EXISTING_FILE,
            nullable=True,
            tooltip="Its weights file, or the folder holding it (empty: its Hugging Face copy; mean needs none).",
        )
        self.labels = FileEdit(
            label="Support labels",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.csv",
            nullable=True,
            tooltip="CSV slide,label[,patient] of labelled slides (paths relative to the CSV), as the --train "
            "CSV of `slidescope few-shot`; with a patient column the support is pooled per patient.",
        )
        self.stores = FileEdit(
            label="Support stores",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="Folder with the support slides' stores, made with the same encoder and tiling "
            "(`slidescope extract --encoder ENCODER --out FOLDER`).",
        )
        self.method = ComboBox(
            label="Few-shot method",
            choices=list(FEW_SHOT_METHODS),
            value=DEFAULT_METHOD,
            tooltip="How the support set classifies the slide (default: that of `slidescope few-shot`).",
        )
        self.slide_encoder.changed.connect(self.on_slide_encoder)
        self.on_slide_encoder(self.slide_encoder.value)

    @property
    def widgets(self) -> list[Any]:
        """The fields, in the order they appear."""
        return [self.slide_encoder, self.note, self.weights, self.labels, self.stores, self.method]

    def show(self, visible: bool) -> None:
        for widget in self.widgets:
            widget.visible = visible

    def on_slide_encoder(self, name: str | None) -> None:
        """Set the widget's Encoder to the patch encoder ``name`` needs, and say so."""
        if not name:
            return
        needed = required_encoder(name)
        if needed is None:
            self.note.value = (
                f"{name} pools any encoder's tiles: the support stores must hold the chosen Encoder's."
            )
            return
        self._set_encoder(needed)
        self.note.value = f"{name} reads {needed} tile embeddings: Encoder set to {needed}."

    def request(self) -> FewShotRequest:
        """The slide encoder and support set the fields describe."""
        return FewShotRequest(
            slide_encoder=str(self.slide_encoder.value),
            labels=_path(self.labels.value),
            stores=_path(self.stores.value),
            weights=str(self.weights.value) if self.weights.value else None,
            method=str(self.method.value),
        )
