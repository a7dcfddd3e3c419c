"""Per-slide pixel size from a manifest's ``slide_mpp`` column: read, used by ``run``, recorded as its source."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from realdata import REPO

from slidescope.errors import InvalidParameterError
from slidescope.wsi import expand_slides, manifest_slide_mpp, open_slide

SAMPLE = REPO / "sample_data" / "sample_slide.tiff"


def _crop(path: Path, x: int, y: int, size: int = 2048) -> Path:
    """A plain PNG cut from the repository's synthetic sample (tissue, no pixel size in the file)."""
    with open_slide(SAMPLE) as slide:
        Image.fromarray(slide.read_region((x, y), 0, (size, size))).save(path)
    return path


def test_manifest_column_is_read_per_slide(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,mpp\na.png,0.25\nb.svs,\nc.svs,1.5\n")  # `mpp`: TRIDENT's column name
    paths = expand_slides([manifest])
    assert [p.name for p in paths] == ["a.png", "b.svs", "c.svs"]  # type: ignore[union-attr]
    assert manifest_slide_mpp([manifest]) == {str(paths[0]): 0.25, str(paths[2]): 1.5}
    assert manifest_slide_mpp([tmp_path / "a.png"]) == {}


@pytest.mark.parametrize("bad", ["-1", "abc", "inf", "0"])
def test_a_bad_manifest_value_names_the_line(tmp_path: Path, bad: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,slide_mpp\na.svs,0.5\nb.svs,{bad}\n")
    with pytest.raises(InvalidParameterError, match=r"m.csv, line 3: the slide_mpp column"):
        manifest_slide_mpp([manifest])


def test_run_uses_each_slides_manifest_mpp(tmp_path: Path) -> None:
    from slidescope.features.store import open_store, store_path
    from slidescope.pipeline import run

    slides = tmp_path / "slides"
    slides.mkdir()
    _crop(slides / "one.png", 1024, 512)
    (slides / "two.png").write_bytes((slides / "one.png").read_bytes())  # the same pixels
    manifest = slides / "manifest.csv"
    manifest.write_text("slide,slide_mpp\none.png,0.25\ntwo.png,0.5\n")
    result = run(
        manifest, encoder="he-descriptor", out=tmp_path / "out", device="cpu", num_workers=0, progress=False
    )
    by_name = {Path(o.slide).name: o for o in result.outcomes}
    assert by_name["one.png"].status == "done" and by_name["two.png"].status == "done"
    assert by_name["one.png"].slide_mpp == [0.25, 0.25] and by_name["two.png"].slide_mpp == [0.5, 0.5]
    assert by_name["one.png"].mpp_source == "manifest (slide_mpp column)"
    # the store records where the pixel size came from
    store = open_store(store_path(tmp_path / "out" / "stores", str(slides / "two.png")))
    assert store.attrs["slide"]["mpp_source"] == "manifest" and store.attrs["slide"]["backend"] == "pil"
    # the same image at half the pixel size covers a quarter of the area: fewer tiles at 0.5 µm/px
    n1, n2 = by_name["one.png"].n_tiles, by_name["two.png"].n_tiles
    assert 0 < n1 < n2
    # a changed manifest value redoes that slide only
    manifest.write_text("slide,slide_mpp\none.png,0.25\ntwo.png,0.4\n")
    again = run(
        manifest, encoder="he-descriptor", out=tmp_path / "out", device="cpu", num_workers=0, dry_run=True
    )
    actions = {Path(p.slide).name: (p.action, p.reason) for p in again.plan}
    assert actions["one.png"][0] == "skip"
    assert actions["two.png"][0] == "do" and "manifest's slide_mpp is 0.4" in actions["two.png"][1]
