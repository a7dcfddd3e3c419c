"""h5 files read the way CLAM's and TRIDENT's own readers read them.

The reading logic below restates, in a few lines each, what the two toolkits do with a ``coords`` dataset
(read there, not copied):

* CLAM, mahmoodlab/CLAM @ 53e2409d4a8189c682c173382964a85f114f923c, dataset_modules/dataset_h5.py,
  ``Whole_Slide_Bag_FP``: ``patch_level = attrs['patch_level']``, ``patch_size = attrs['patch_size']``,
  then ``wsi.read_region(coord, patch_level, (patch_size, patch_size))`` with OpenSlide.
* TRIDENT, mahmoodlab/TRIDENT @ a91fa8490e0210ebbbe58452c3babe009e0ab7ca, trident/wsi_objects/WSI.py
  ``extract_patch_features``: ``patch_size``, ``level0_magnification``, ``target_magnification`` from the
  attrs (all present, else ``WSIPatcher.from_legacy_coords_file``: ``patch_size`` at ``patch_level`` times
  ``custom_downsample``); trident/wsi_objects/WSIPatcher.py: ``patch_size_src = round(patch_size *
  dst_pixel_size / src_pixel_size)`` (pixel size = 10 / magnification), ``_prepare`` picks the level
  (``get_best_level_and_custom_downsample``, tolerance 0.1) and reads ``round(patch_size_src /
  int(level_downsample))`` px there.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from slidescope.errors import InvalidParameterError
from slidescope.features import export_h5, extract_features, import_h5, open_store
from slidescope.features.h5 import h5_coords_attrs
from slidescope.wsi import make_tile_grid, open_slide


def clam_regions(h5: Path, level_downsamples: list[float]) -> np.ndarray:
    """(N, 4) level-0 (x, y, w, h) CLAM's Whole_Slide_Bag_FP reads for each coordinate."""
    with h5py.File(h5, "r") as f:
        patch_level = f["coords"].attrs["patch_level"]  # a KeyError here is CLAM's too
        patch_size = f["coords"].attrs["patch_size"]
        coords = f["coords"][:]
    side = patch_size * level_downsamples[patch_level]
    return np.column_stack([coords, np.full((len(coords), 2), side)])


def trident_regions(h5: Path, level_downsamples: list[float], slide_mpp: float) -> np.ndarray:
    """(N, 4) level-0 (x, y, w, h) TRIDENT's extract_patch_features reads for each coordinate."""
    with h5py.File(h5, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    patch_size = attrs.get("patch_size")
    mag0, target = attrs.get("level0_magnification"), attrs.get("target_magnification")
    if None in (patch_size, mag0, target):  # the legacy (CLAM / Fishing-Rod) path, wsi.mpp known
        ratio = level_downsamples[attrs["patch_level"]] * attrs.get("custom_downsample", 1)
        src, dst = slide_mpp, slide_mpp * ratio
    else:
        src, dst = 10 / mag0, 10 / target
    downsample = dst / src
    patch_size_src = round(patch_size * downsample)
    level = next(
        (i for i, d in enumerate(level_downsamples) if abs(d - downsample) <= 0.1),
        max(i for i, d in enumerate(level_downsamples) if d <= downsample),
    )
    read = round(patch_size_src / int(level_downsamples[level]))
    side = read * level_downsamples[level]
    return np.column_stack([coords, np.full((len(coords), 2), side)])


def _export(pyramid, tiny_encoder, tmp_path, *, mpp: float, levels: int, flavor: str):
    path = pyramid(2048, 1536, mpp=mpp, levels=levels)
    with open_slide(path, backend="openslide") as slide:
        grid = make_tile_grid(slide, tile_size=256, mpp=0.5, min_tissue=0.0)
        res = extract_features(
            slide, grid, tiny_encoder(), store=tmp_path / "s", num_workers=0, progress=False
        )
    import openslide

    with openslide.OpenSlide(str(path)) as osr:  # the downsamples both toolkits get from OpenSlide
        downsamples = list(osr.level_downsamples)
    h5 = export_h5(res.store, "tiny-test", tmp_path / f"{flavor}.h5", flavor=flavor)
    ours = np.column_stack([grid.coords, np.tile(grid.extent, (len(grid), 1))])
    return h5, downsamples, ours, grid


@pytest.mark.parametrize(
    ("mpp", "levels", "clam_reads_default"),
    [
        (0.25, 3, True),  # 40x with a 2x level: tiles read unresized at level 1, one file serves both
        (0.25, 1, False),  # 40x without a 20x level (like an SVS with 4x steps): the flavours differ
        (0.5, 2, True),  # 20x: tiles are level 0 as they are
    ],
)
def test_clam_and_trident_read_our_tiles(pyramid, tiny_encoder, tmp_path, mpp, levels, clam_reads_default):
    h5, ds, ours, grid = _export(pyramid, tiny_encoder, tmp_path, mpp=mpp, levels=levels, flavor="trident")
    assert grid.extent == (round(256 * 0.5 / mpp),) * 2 and len(grid) > 4
    np.testing.assert_array_equal(trident_regions(h5, ds, mpp), ours)
    if clam_reads_default:
        np.testing.assert_array_equal(clam_regions(h5, ds), ours)
    else:  # CLAM stops instead of reading 256 level-0 px of a 512 px tile
        with pytest.raises(KeyError):
            clam_regions(h5, ds)
    clam_h5, ds, ours, _ = _export(pyramid, tiny_encoder, tmp_path, mpp=mpp, levels=levels, flavor="clam")
    np.testing.assert_array_equal(clam_regions(clam_h5, ds), ours)
    np.testing.assert_array_equal(trident_regions(clam_h5, ds, mpp), ours)  # TRIDENT's legacy path


_SLIDE_MPPS = [0.2526, 0.25, 0.2431, 0.5, 0.1213, 0.4990]
_TILINGS = [(224, 0.5), (256, 0.5), (512, 1.0), (224, 0.25)]


@pytest.mark.parametrize(
    ("slide_mpp", "tile_size", "target"),
    # only downsampling or native: a target finer than the scan is no tiling slidescope makes
    [(m, t, g) for m in _SLIDE_MPPS for t, g in _TILINGS if g >= m * 0.9],
)
def test_trident_footprint_matches_our_grid_rounding(slide_mpp, tile_size, target) -> None:
    """At scanner pixel sizes that do not divide evenly, TRIDENT's rounding gives our grid's extent."""
    extent = round(tile_size * target / slide_mpp)  # make_tile_grid's footprint
    tiling = {"tile_size": tile_size, "mpp": target, "extent": [extent, extent], "overlap": 0, "level": 0}
    attrs = h5_coords_attrs(tiling, {"dimensions": [1, 1], "mpp": [slide_mpp] * 2, "name": "s"}, "trident")
    patch_size_src = round(
        attrs["patch_size"] * (10 / attrs["target_magnification"]) / (10 / attrs["level0_magnification"])
    )
    assert patch_size_src == extent == attrs["patch_size_level0"]
    assert "patch_level" not in attrs or attrs["patch_size"] == extent  # level 0, downsample 1


def test_round_trip_keeps_the_footprint(pyramid, tiny_encoder, tmp_path) -> None:
    h5, _, _, grid = _export(pyramid, tiny_encoder, tmp_path, mpp=0.25, levels=1, flavor="trident")
    back = open_store(import_h5(h5, encoder="tiny-test", store=tmp_path / "imported"))
    assert back.tile_extent == grid.extent and np.array_equal(back.coords, grid.coords)
    assert back.attrs["tiling"]["tile_size"] == 256
    np.testing.assert_allclose(back.attrs["tiling"]["effective_mpp"], grid.effective_mpp)
    clam_h5, _, _, _ = _export(pyramid, tiny_encoder, tmp_path, mpp=0.25, levels=1, flavor="clam")
    clam_back = open_store(import_h5(clam_h5, encoder="tiny-test", store=tmp_path / "c", slide_mpp=0.25))
    assert clam_back.tile_extent == grid.extent


def _clam_features_file(path: Path, n: int = 5, dim: int = 1024) -> Path:
    """What CLAM's extract_features_fp.py writes: ``features`` and ``coords``, no attributes."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32))
        f.create_dataset("coords", data=(np.arange(2 * n).reshape(n, 2) * 512).astype(np.int32))
    return path


def test_import_attribute_less_clam_file(tmp_path) -> None:
    h5 = _clam_features_file(tmp_path / "slide1.h5")
    with pytest.raises(InvalidParameterError, match="--patch-size-level0"):
        import_h5(h5, encoder="uni", store=tmp_path / "s", slide_mpp=0.25)
    with pytest.raises(InvalidParameterError, match="pixel size"):
        import_h5(h5, encoder="uni", store=tmp_path / "s", patch_size_level0=512)
    st = open_store(import_h5(h5, encoder="uni", store=tmp_path / "s", patch_size_level0=512, slide_mpp=0.25))
    assert st.tile_extent == (512, 512) and st.embeddings("uni").shape == (5, 1024)
    st = open_store(
        import_h5(h5, encoder="uni", store=tmp_path / "t", patch_size=224, patch_mpp=0.5, slide_mpp=0.25)
    )
    assert st.tile_extent == (448, 448) and st.attrs["tiling"]["tile_size"] == 224
    with pytest.raises(InvalidParameterError, match="1024-d"):
        import_h5(h5, encoder="he-descriptor", store=tmp_path / "u", patch_size_level0=512, slide_mpp=0.25)


def test_import_trident_empty_slide_file(tmp_path) -> None:
    """TRIDENT's extract_patch_features for a slide without patches: features (0,) (width unknown) or
    (0, D), coords (0, 2), chunked with an unlimited first axis (trident/IO.py save_h5)."""
    attrs = {
        "patch_size": 256,
        "patch_size_level0": 512,
        "level0_magnification": 40,
        "target_magnification": 20,
    }
    for shape in [(0,), (0, 1024)]:
        path = tmp_path / f"empty{len(shape)}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "features", shape=shape, maxshape=(None, *shape[1:]), chunks=(1, *shape[1:]), dtype="f4"
            )
            c = f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), chunks=(1, 2), dtype="i8")
            c.attrs.update({**attrs, "name": f"empty{len(shape)}", "savetodir": "None"})
        st = open_store(import_h5(path, encoder="uni", store=tmp_path / "s"))
        assert st.n_tiles == 0 and st.embeddings("uni").shape == (0, 1024)
        assert st.attrs["slide"]["mpp"] == [0.25, 0.25]
    with pytest.raises(InvalidParameterError, match="embedding width"):
        import_h5(tmp_path / "empty1.h5", encoder="not-registered", store=tmp_path / "x")


def test_import_refuses_what_is_not_a_feature_file(tmp_path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("imgs", data=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(InvalidParameterError, match="no 'coords'"):
        import_h5(path, encoder="uni", store=tmp_path / "s", slide_mpp=0.25)
    (tmp_path / "text.h5").write_text("not h5")
    with pytest.raises(InvalidParameterError, match="cannot be read as an h5"):
        import_h5(tmp_path / "text.h5", encoder="uni", store=tmp_path / "s", slide_mpp=0.25)
