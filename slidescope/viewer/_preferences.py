"""Make napari open slides with slidescope's reader (lazy, in µm) rather than its eager builtin one.

napari's builtin reader also claims ``*.svs``, ``*.tif``, ``*.ndpi``, ``*.dcm``... With two readers for
a file and no preference, ``viewer.open(path)`` raises and a drop on the window asks with a "Choose
reader" dialog; npe2 has no reader priority, and napari picks a reader without asking only from the
user's preference (``settings.plugins.extension2reader``, Preferences > Plugins). So, when the plugin
is activated (napari runs its first slidescope command: the sample, a widget, the reader), every slide
pattern the user has no preference for is set to slidescope; a preference the user chose stays. The
dialog napari shows before that lists readers sorted by display name, so the manifest's display name
``Slidescope`` (capital S sorts before ``napari builtins``) makes it pre-select slidescope.
"""

from __future__ import annotations

from typing import Any

from ._reader import SLIDE_PATTERNS

__all__ = ["PLUGIN", "prefer_slidescope_reader", "activate"]

#: the plugin's npe2 name (the distribution name)
PLUGIN = "slidescope"


def prefer_slidescope_reader(settings: Any = None) -> list[str]:
    """Set slidescope as the reader of each ``*<slide extension>`` the user has no preference for.

    Parameters
    ----------
    settings : napari settings (default: ``napari.settings.get_settings()``, saved with napari's settings).

    Returns
    -------
    list of str
        The patterns set now (empty when the user already chose a reader for every one).
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    added = [f"*{ext}" for ext in SLIDE_PATTERNS if f"*{ext}" not in current]
    if added:
        settings.plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN)}
    return added


def activate(_context: Any = None) -> None:
    """npe2 ``on_activate``: :func:`prefer_slidescope_reader`."""
    prefer_slidescope_reader()
