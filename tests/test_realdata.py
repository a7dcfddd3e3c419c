"""tests/realdata.py: real test files are found, checked by SHA-256, skipped when missing, failed in CI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import realdata
from realdata import real_dir, real_file

CONTENT = b"not really a slide"
NAME = "slides/fake.svs"


@pytest.fixture
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder holding one listed file, with ``$SLIDESCOPE_TEST_DATA`` pointing at it; CI unset."""
    (tmp_path / "slides").mkdir()
    (tmp_path / NAME).write_bytes(CONTENT)
    monkeypatch.setattr(realdata, "checksums", lambda: {NAME: hashlib.sha256(CONTENT).hexdigest()})
    monkeypatch.setenv("SLIDESCOPE_TEST_DATA", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    return tmp_path


def test_a_listed_file_with_the_right_content_is_returned(fake_data: Path) -> None:
    assert real_file(NAME) == fake_data / NAME
    assert real_dir("slides") == fake_data / "slides"


def test_missing_file_skips_locally_and_fails_in_ci(fake_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fake_data / NAME).unlink()
    with pytest.raises(pytest.skip.Exception, match="SLIDESCOPE_TEST_DATA"):
        real_file(NAME)
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="CI is set"):
            real_file(NAME)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        real_file(NAME)


def test_the_variable_is_the_only_place_looked_at_when_set(
    fake_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIDESCOPE_TEST_DATA", str(fake_data / "nonexistent"))
    with pytest.raises(pytest.skip.Exception, match="nonexistent"):
        real_file(NAME)


def test_wrong_content_fails_even_locally(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    (other / "slides").mkdir(parents=True)
    (other / NAME).write_bytes(CONTENT + b"!")
    monkeypatch.setenv("SLIDESCOPE_TEST_DATA", str(other))
    with pytest.raises(pytest.fail.Exception, match="expected " + hashlib.sha256(CONTENT).hexdigest()):
        real_file(NAME)


def test_unlisted_name_is_a_test_bug(fake_data: Path) -> None:
    with pytest.raises(KeyError, match="not a known real test file"):
        real_file("slides/other.svs")


def test_checksum_list_equals_the_data_folders_own(shared_data: Path) -> None:
    """The list kept in the repository is the one published with the data (SHA256SUMS)."""
    published = {}
    for line in (shared_data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        published[name] = digest
    assert realdata.checksums() == published
