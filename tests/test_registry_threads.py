"""A registry's built-ins load once, and every thread that asks meanwhile waits for them.

A Dask worker runs tasks in threads: its second thread used to see the encoder registry half-filled
("unknown encoder 'he-descriptor'. Registered: ;") because the first one marked the built-ins loaded before
registering them."""

from __future__ import annotations

import threading
import time

import pytest

from slidescope._plugins import Once


def test_once_makes_other_threads_wait_and_lets_the_loader_reenter() -> None:
    once, seen, registry = Once(), [], []

    def loader() -> None:
        for i in range(5):
            registry.append(i)
            once(loader)  # re-entered from inside the loader: returns at once
            time.sleep(0.01)

    def ask() -> None:
        once(loader)
        seen.append(len(registry))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry == [0, 1, 2, 3, 4] and seen == [5] * 6


def test_a_failed_loader_runs_again() -> None:
    once, calls = Once(), []

    def broken() -> None:
        calls.append(1)
        raise ImportError("half-installed")

    for _ in range(2):
        with pytest.raises(ImportError):
            once(broken)
    assert len(calls) == 2  # not marked loaded with an empty registry


def test_encoder_registry_is_complete_in_every_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from slidescope.features.encoders import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", {})
    monkeypatch.setattr(_registry, "_BUILTINS_ONCE", Once())
    real = _registry.register_encoder

    def slow(config, builder) -> None:  # a slow import of the catalog (a cold disk, a busy machine)
        time.sleep(0.002)
        real(config, builder)

    monkeypatch.setattr(_registry, "register_encoder", slow)
    lists: list[list[str]] = []
    threads = [threading.Thread(target=lambda: lists.append(_registry.list_encoders())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lists) == 4 and all(names == lists[0] for names in lists)
    assert "he-descriptor" in lists[0] and len(lists[0]) >= 30
