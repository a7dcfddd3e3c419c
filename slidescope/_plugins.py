"""Plugins: models and readers that other distributions register through ``importlib.metadata`` entry points.

A lab's package makes its encoder, aggregator, slide-text model or slide reader appear in slidescope (the
Python API, every CLI command and its ``--help``, napari, and the Dask worker processes, which each load
the plugins on first use) by declaring an entry point in one of :data:`GROUPS`, e.g. in its
``pyproject.toml``::

    [project.entry-points."slidescope.encoders"]
    my-encoder = "my_lab.slidescope_plugin"            # a module that registers on import
    my-other = "my_lab.plugin:register_encoders"       # or a function called with no arguments

The object an entry point names is loaded (a module is imported; a function is then called) the first
time its registry is asked for a name or a list, once per process. The registration itself is the
registry's own call (:func:`slidescope.features.register_encoder`, :func:`slidescope.mil.register_aggregator`,
:func:`slidescope.vlm.published.register_published_model`,
:func:`slidescope.features.slide_encoders.register_slide_encoder`, :func:`slidescope.wsi.register_backend`), so a
plugin registers exactly as the built-ins do. A plugin that fails to load does not stop slidescope: the
failure is logged (a warning on the ``slidescope`` logger) and kept in :func:`plugin_failures`;
``slidescope encoders`` prints it. The entry point's own name is only a label (the registered name is what
counts). See docs/PLUGINS.md.
"""

from __future__ import annotations

import inspect
import logging
import threading
import types
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["GROUPS", "Once", "load_plugins", "plugin_failures"]

#: registry -> entry point group
GROUPS = {
    "encoders": "slidescope.encoders",
    "aggregators": "slidescope.aggregators",
    "slide_models": "slidescope.slide_models",
    "slide_encoders": "slidescope.slide_encoders",
    "readers": "slidescope.readers",
    "text_towers": "slidescope.text_towers",
}

_loaded: set[str] = set()
_failures: dict[str, dict[str, str]] = {}
_lock = threading.RLock()


def load_plugins(group: str) -> None:
    """Load every entry point of ``group`` (a key of :data:`GROUPS` or the group's full name), once."""
    full = GROUPS.get(group, group)
    with _lock:
        if full in _loaded:
            return
        _loaded.add(full)  # first: a plugin that lists the registry while it loads does not recurse
        from importlib.metadata import entry_points

        for ep in entry_points(group=full):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, (type, types.ModuleType)):
                    if inspect.signature(obj).parameters:
                        raise TypeError(f"{ep.value} must take no arguments")
                    obj()
            except Exception as err:  # noqa: BLE001 - a broken plugin must not stop slidescope
                _failures.setdefault(full, {})[ep.name] = f"{type(err).__name__}: {err}"
                log.warning(
                    "slidescope plugin %r (%s, group %s) failed to load: %s", ep.name, ep.value, full, err
                )


class Once:
    """Runs a registry's loader (its built-ins) once per process, safely across threads.

    Another thread that asks while the loader runs waits for it to finish (it would otherwise see a
    half-filled registry: a Dask worker's threads once reported "unknown encoder 'he-descriptor'.
    Registered: ;"); a call from inside the loader itself (a module that lists the registry while it
    registers) returns at once; a loader that raises is run again on the next call instead of leaving the
    registry empty for good."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = "new"  # "running" (in the thread holding the lock), "done"

    def __call__(self, loader: Callable[[], object]) -> None:
        if self._state == "done":
            return
        with self._lock:
            if self._state != "new":  # done meanwhile, or re-entered by the loader in this thread
                return
            self._state = "running"
            try:
                loader()
            except BaseException:
                self._state = "new"
                raise
            self._state = "done"

    def reset(self) -> None:
        """Forget that the loader ran (tests)."""
        with self._lock:
            self._state = "new"


def plugin_failures(group: str | None = None) -> dict[str, str]:
    """Entry point name -> why it failed, for ``group`` (or every group, names prefixed by the group)."""
    if group is not None:
        return dict(_failures.get(GROUPS.get(group, group), {}))
    return {f"{g}:{n}": why for g, items in _failures.items() for n, why in items.items()}


def _reset_for_tests() -> None:
    """Forget what was loaded (tests that install a plugin distribution in this process)."""
    with _lock:
        _loaded.clear()
        _failures.clear()
