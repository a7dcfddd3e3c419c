"""embed_slide: the per-slide orchestration shared by `slidescope run` and the viewer's analysis."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from slidescope.errors import EmptyTissueError
from slidescope.features import create_encoder
from slidescope.options import TilingOptions
from slidescope.pipeline import EmbeddedSlide, embed_slide
from slidescope.viewer._analysis import AnalysisRequest
from slidescope.wsi import TissueMask, detect_tissue, open_slide


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("he-descriptor", device="cpu")  # 224 px at 0.5 µm/px, offline


@pytest.fixture
def slide(pyramid):
    """A 2048 x 1536 slide at 0.25 µm/px, all tissue: 4 x 3 tiles of 224 px at 0.5 µm/px."""
    with open_slide(pyramid(2048, 1536, mpp=0.25)) as s:
        yield s


def _box(slide, width: int, height: int) -> TissueMask:
    ring = [[0, 0], [width, 0], [width, height], [0, height], [0, 0]]
    return TissueMask.from_geojson(
        {"type": "Polygon", "coordinates": [ring]}, slide_dimensions=slide.dimensions, slide_mpp=slide.mpp
    )


def test_detected_tissue_hooks_and_timer(slide, encoder, tmp_path: Path) -> None:
    steps: list[str] = []
    progress: list[tuple[int, int]] = []
    stages: list[str] = []

    @contextlib.contextmanager
    def timer(stage: str):
        stages.append(stage)
        yield

    done = embed_slide(
        slide,
        encoder,
        stores=tmp_path,
        batch_size=4,
        num_workers=0,
        on_progress=lambda d, t: progress.append((d, t)),
        on_step=lambda step, value: steps.append(step),
        timer=timer,
    )
    assert isinstance(done, EmbeddedSlide)
    assert done.mask.area_um2 == pytest.approx(detect_tissue(slide).area_um2)
    assert len(done.grid) == 12 and done.result.n_tiles == 12 and done.result.status == "done"
    assert steps == ["tissue", "grid"] and stages == ["tissue", "tiles", "extract"]
    assert progress and progress[-1] == (12, 12)
    assert (tmp_path / f"{Path(slide.path).stem}.zarr").is_dir()


def test_given_mask_is_used_and_options_apply(slide, encoder, tmp_path: Path) -> None:
    mask = _box(slide, 896, 1536)  # the left 448 px at 0.5 µm/px: 2 x 3 tiles
    stages: list[str] = []

    @contextlib.contextmanager
    def timer(stage: str):
        stages.append(stage)
        yield

    done = embed_slide(slide, encoder, stores=tmp_path, mask=mask, num_workers=0, timer=timer)
    assert done.mask is mask and len(done.grid) == 6 and "tissue" not in stages
    finer = TilingOptions(tile_size=112, min_tissue=0.5)
    assert len(embed_slide(slide, encoder, stores=tmp_path / "b", mask=mask, tiling=finer).grid) == 24


def test_stop_cancels_between_batches(slide, encoder, tmp_path: Path) -> None:
    done = embed_slide(slide, encoder, stores=tmp_path, batch_size=4, num_workers=0, should_stop=lambda: True)
    assert done.result.status == "cancelled"


def test_no_tile_says_what_to_lower_with_the_pen_hint(
    slide, encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "slidescope.wsi.pen_hint", lambda mask: " Pen removal took most of it: try --pen off."
    )
    with pytest.raises(
        EmptyTissueError, match=r"no tile of 224 px at 0.5 µm/px .*--min-tissue.*try --pen off"
    ):
        embed_slide(slide, encoder, stores=tmp_path, mask=_box(slide, 40, 40), name="my-slide")
    with pytest.raises(EmptyTissueError, match="^my-slide: "):
        embed_slide(slide, encoder, stores=tmp_path, mask=_box(slide, 40, 40), name="my-slide")
    assert not (tmp_path / f"{Path(slide.path).stem}.zarr").exists()


def test_viewer_tiles_with_the_schema_defaults() -> None:
    request = AnalysisRequest(slide=Path("s.svs"))
    defaults = TilingOptions()
    assert (request.min_tissue, request.overlap, request.pen) == (
        defaults.min_tissue,
        defaults.overlap,
        defaults.pen,
    )
