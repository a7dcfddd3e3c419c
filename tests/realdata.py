"""The real test files (slides and broken fixtures), found, checked against their SHA-256 and handed out.

Every test that reads a real file gets it through :func:`real_file` (or :func:`real_dir`, or the
fixtures in ``conftest.py`` built on them). The files are not in the repository: they are looked up in
``$SLIDESCOPE_TEST_DATA`` when that variable is set (and only there), otherwise in ``../shared/data``
beside the checkout. Each one must match its SHA-256 in ``tests/realdata.sha256`` (kept in the
repository, generated from the data folder's ``SHA256SUMS``); a file is hashed once per test session.

A missing file skips the test with the reason, except in CI (the ``CI`` environment variable set to
anything but ``""``, ``0``, ``false`` or ``no``; ``.ci/run`` sets ``CI=true``), where it fails the test:
CI must not pass by skipping. A file with the wrong checksum always fails.

The files are located, not downloaded: one of them (``OS-1-detail.ome.tif``, a QuPath export of a crop)
has no public download URL, so a fetcher such as pooch would have nothing to fetch; hashing uses
:mod:`hashlib`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKSUMS = Path(__file__).with_name("realdata.sha256")
ENV = "SLIDESCOPE_TEST_DATA"


@functools.cache
def checksums() -> dict[str, str]:
    """``{relative path: sha256 hex}`` from ``tests/realdata.sha256`` (``sha256sum`` format)."""
    table = {}
    for line in CHECKSUMS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            table[name.lstrip("*")] = digest.lower()
    return table


def data_root() -> Path:
    """``$SLIDESCOPE_TEST_DATA`` when set, else ``shared/data`` beside the checkout (it may not exist)."""
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def in_ci() -> bool:
    """True when the ``CI`` environment variable says this is a CI run."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def real_file(name: str) -> Path:
    """The real test file ``name`` (e.g. ``"slides/CMU-1-Small-Region.svs"``), checked against its SHA-256.

    Skips the calling test when the file is missing, fails it instead in CI; fails it when the file's
    content is not the one listed in ``tests/realdata.sha256``.
    """
    expected = checksums().get(name)
    if expected is None:
        raise KeyError(
            f"{name!r} is not a known real test file; known: {sorted(checksums())}. "
            f"Add its SHA-256 to {CHECKSUMS.name} first."
        )
    root = data_root()
    path = root / name
    if not path.is_file():
        where = f"${ENV}={os.environ[ENV]}" if os.environ.get(ENV, "").strip() else str(root)
        reason = (
            f"real test file {name} not found in {where}: set {ENV} to the folder that holds the "
            f"test data (slides/, fixtures/), or put shared/data beside the checkout"
        )
        if in_ci():
            pytest.fail(
                f"{reason} (CI is set: missing real data fails the run instead of skipping)", pytrace=False
            )
        pytest.skip(reason)
    actual = _sha256(path.resolve())
    if actual != expected:
        pytest.fail(
            f"{path} has SHA-256 {actual}, expected {expected} ({CHECKSUMS.name}): not the file the "
            "tests were written for; replace it with the published test data",
            pytrace=False,
        )
    return path


def real_dir(folder: str) -> Path:
    """The real-data folder ``folder`` (``"slides"``, ``"fixtures"`` or ``""`` for all) after checking
    every listed file under it with :func:`real_file`."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    names = [name for name in checksums() if name.startswith(prefix)]
    if not names:
        raise KeyError(f"no real test files listed under {folder!r} in {CHECKSUMS.name}")
    for name in names:
        real_file(name)
    return data_root() / folder.strip("/")
