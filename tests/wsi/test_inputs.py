"""expand_slides: files, folders, globs and CSV manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidescope.errors import InvalidParameterError, SlideNotFoundError
from slidescope.wsi import expand_slides


def test_expand(tmp_path: Path) -> None:
    for name in ("a.svs", "b.ndpi", "c.ome.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.svs").write_bytes(b"x")
    folder = expand_slides([tmp_path])
    assert [p.name for p in folder] == ["a.svs", "b.ndpi", "c.ome.tif"]
    assert [p.name for p in expand_slides([str(tmp_path / "*.svs"), tmp_path / "a.svs"])] == ["a.svs"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,label\nsub/d.svs,1\na.svs,0\nmissing.svs,1\n")
    got = expand_slides([manifest])
    assert [p.name for p in got] == [
        "d.svs",
        "a.svs",
        "missing.svs",
    ]  # missing ones reported later by the batch
    assert got[0] == tmp_path / "sub" / "d.svs"


def test_expand_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideNotFoundError):
        expand_slides([tmp_path / "empty"])
    with pytest.raises(SlideNotFoundError):
        expand_slides([str(tmp_path / "*.svs")])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.svs,1\n")
    with pytest.raises(InvalidParameterError, match="'slide'"):
        expand_slides([bad])
