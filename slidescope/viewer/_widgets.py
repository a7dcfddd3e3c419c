"""Small helpers the two dock widgets share: finding slidescope layers, adding layer tuples, notifications."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._reader import METADATA_KEY

log = logging.getLogger("slidescope.viewer")

__all__ = ["slidescope_meta", "slide_layers", "layers_of_kind", "add_layer_tuples", "notify_error"]


def slidescope_meta(layer: Any) -> dict[str, Any]:
    """What slidescope recorded about a layer (``{}`` for other layers)."""
    return dict(getattr(layer, "metadata", {}).get(METADATA_KEY, {}))


def layers_of_kind(viewer: Any, kind: str) -> list[Any]:
    """Layers of the viewer that slidescope made, of one kind (``slide``, ``heatmap``, ``tiles``...)."""
    return [layer for layer in viewer.layers if slidescope_meta(layer).get("kind") == kind]


def slide_layers(viewer: Any) -> list[Any]:
    """The slides open in the viewer (layers made by the slidescope reader or sample)."""
    return layers_of_kind(viewer, "slide")


#: layer properties a re-run updates in place (napari removes layers slowly: it runs the garbage collector)
_UPDATABLE = ("scale", "translate", "contrast_limits", "features", "metadata", "colormap", "units")


def add_layer_tuples(viewer: Any, layers: Iterable[tuple[Any, dict[str, Any], str]]) -> list[Any]:
    """Add layer tuples to the viewer; a slidescope layer of the same name and type (a re-run) is
    updated in place instead, keeping what the user set (opacity, visibility, blending)."""
    added = []
    for data, kwargs, kind in layers:
        name = kwargs.get("name")
        old = next(
            (
                layer
                for layer in viewer.layers
                if layer.name == name and slidescope_meta(layer) and type(layer).__name__.lower() == kind
            ),
            None,
        )
        if old is None:
            added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
            continue
        if not _same_data(old.data, data):
            old.data = data
        for key in _UPDATABLE:
            if key in kwargs:
                setattr(old, key, kwargs[key])
        added.append(old)
    return added


def _same_data(old: Any, new: Any) -> bool:
    """Equal layer data (arrays, or lists of arrays for shapes), compared without copying big arrays."""
    if isinstance(new, list):
        return (
            isinstance(old, list)
            and len(old) == len(new)
            and all(
                np.shape(a) == np.shape(b) and np.array_equal(a, b) for a, b in zip(old, new, strict=True)
            )
        )
    return (
        isinstance(old, np.ndarray)
        and old.shape == np.shape(new)
        and np.array_equal(old, new, equal_nan=True)
    )


#: the button on an error toast that opens the whole message
WHOLE_MESSAGE = "Whole message"


def notify_error(message: str) -> None:
    """A napari error notification (no traceback dialog) starting with ``slidescope:``.

    napari's toast shows one elided line; its :data:`WHOLE_MESSAGE` button opens the whole message in a
    dialog (selectable text, stays until closed), and the message also goes to the ``slidescope.viewer``
    log (napari's console and the terminal napari was started from)."""
    from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

    text = message if message.startswith("slidescope") else f"slidescope: {message}"
    log.error("%s", text)
    notification_manager.dispatch(
        Notification(
            text,
            severity=NotificationSeverity.ERROR,
            actions=[(WHOLE_MESSAGE, lambda toast: show_message_dialog(text, toast))],
        )
    )


def show_message_dialog(text: str, toast: Any = None) -> Any:
    """Open ``text`` in a non-modal message box (over the toast's window); returns the box."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QMessageBox

    parent = toast.window() if toast is not None and hasattr(toast, "window") else None
    box = QMessageBox(QMessageBox.Icon.Critical, "slidescope", text, QMessageBox.StandardButton.Close, parent)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setModal(False)
    box.show()
    return box


def short_path(path: str | Path) -> str:
    """The file name of a path, for labels."""
    return Path(path).name
