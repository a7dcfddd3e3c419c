"""Faulty and hostile slide files (issue 18: defects 1, 7, 8 and the reader's messages of 15).

Every broken input is made here from a good one: a JPEG tile's entropy-coded data cut short in place,
a TIFF header that declares a huge single-strip image, a page with fewer tile offsets than tiles,
16-bit / float / greyscale / multiplex TIFFs. Each test asserts the slidescope error (or the
backend's own pixels) that replaces what used to be garbage, an uncaught exception or a misleading
message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import corrupt_tile, forged_bomb, forged_offsets, tile_bytes_location, write_tiff

from slidescope.errors import MissingMppError, SlideReadError, UnsupportedSlideError
from slidescope.wsi import iter_tiles, make_tile_grid, open_slide, read_tile
from slidescope.wsi import _tiff

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"  # 4096x3072 JPEG-tiled pyramid, 2 levels, 0.5 µm/px


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slidescope", *args], capture_output=True, text=True)


@pytest.fixture
def sample_grid():
    with open_slide(SAMPLE) as slide:
        yield slide, make_tile_grid(slide, tile_size=224, mpp=0.5)


def _damaged_copy(
    tmp_path: Path, grid, how: str, name: str = "damaged.tiff"
) -> tuple[Path, int, tuple[int, int]]:
    """A copy of the sample slide whose level-0 file tile under a tissue tile is damaged."""
    path = tmp_path / name
    shutil.copy(SAMPLE, path)
    index = len(grid) // 2
    x, y = (int(v) for v in grid.coords[index])
    tx, ty = x // 256, y // 256
    corrupt_tile(path, tx, ty, how)
    return path, index, (tx, ty)


# -- 1: a corrupt JPEG tile is never read as garbage ------------------------------------------------


@pytest.mark.parametrize("how", ["eoi", "zeros"])
def test_corrupt_tile_fails_like_the_backend(tmp_path: Path, sample_grid, how: str) -> None:
    _, grid = sample_grid
    path, index, (tx, ty) = _damaged_copy(tmp_path, grid, how)
    # (a fresh handle each time: after one read error an OpenSlide handle refuses every later read)
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        # the backend's verdict: OpenSlide refuses this file tile (precondition of the test)
        with pytest.raises(SlideReadError, match="Corrupt JPEG data"):
            slide.read_region((tx * 256, ty * 256), 0, (256, 256))
    # the fast direct reader used to decode it to grey-filled garbage; now it defers to that verdict
    with open_slide(path) as slide:
        assert slide.tile_source() is not None and slide.tile_source().has_level(grid.level)
        with pytest.raises(
            SlideReadError, match=rf"damaged\.tiff.*file tile \({tx}, {ty}\) of level 0"
        ) as info:
            for _ in iter_tiles(slide, grid):
                pass
        assert "Corrupt JPEG data" in str(info.value)
    with (
        open_slide(path) as slide,
        pytest.raises(SlideReadError, match=rf"file tile \({tx}, {ty}\) of level 0"),
    ):
        read_tile(slide, grid, index)
    # tiles elsewhere still read, and equal the backend's
    other = 0 if index else len(grid) - 1
    with open_slide(path) as a, open_slide(path) as b:
        assert np.array_equal(read_tile(a, grid, other), read_tile(b, grid, other, direct=False))


def test_a_false_alarm_returns_the_backends_pixels(monkeypatch, sample_grid) -> None:
    slide, grid = sample_grid
    expected = dict(iter_tiles(slide, grid, direct=False))
    # every tile looks damaged to the fast reader: each one is then read through the backend
    monkeypatch.setattr(_tiff, "jpeg_damage", lambda data, header=None: "forced by the test")
    with open_slide(SAMPLE) as fresh:
        got = dict(iter_tiles(fresh, grid))
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[i], expected[i]) for i in expected)


def test_jpeg_damage_on_real_tile_bytes() -> None:
    offset, count = tile_bytes_location(SAMPLE, 0, 5, 5)
    data = SAMPLE.read_bytes()[offset : offset + count]
    assert _tiff.jpeg_damage(data) is None
    assert _tiff.jpeg_damage(data + b"\x00\x00") is None  # zero padding after EOI is allowed
    assert "truncated" in _tiff.jpeg_damage(data[: count // 2])
    sos = data.find(b"\xff\xda")
    mid = sos + (count - sos) // 2
    cut = data[:mid] + b"\xff\xd9" + data[mid + 2 :]
    assert "premature end of data segment" in _tiff.jpeg_damage(cut)


def test_jpeg_damage_with_the_header_of_the_last_tile_remembered() -> None:
    """The header walk is skipped for a tile that starts with the last well-formed header: the checks
    after it still run, and a different or malformed header is still walked."""
    offset, count = tile_bytes_location(SAMPLE, 0, 5, 5)
    data = SAMPLE.read_bytes()[offset : offset + count]
    sos = data.find(b"\xff\xda")
    header = [b""]
    assert _tiff.jpeg_damage(data, header) is None
    assert header[0] and data.startswith(header[0])
    mid = sos + (count - sos) // 2
    assert "premature" in _tiff.jpeg_damage(data[:mid] + b"\xff\xc4" + data[mid + 2 :], header)  # same header
    assert "truncated" in _tiff.jpeg_damage(data[: sos + 8], header)
    assert "malformed" in _tiff.jpeg_damage(b"\xff\xd8\x00\x00" + data[4:], header)
    # a header that only begins like the remembered one: walked, and found short
    assert "malformed" in _tiff.jpeg_damage(data[: sos - 4] + b"\xff\xd9", header)
    assert _tiff.jpeg_damage(data, header) is None
    # a different well-formed header (another slide's tile): walked and remembered in its place
    other = b"\xff\xd8\xff\xfe\x00\x04ab" + data[2:]  # a comment segment added before the rest
    assert _tiff.jpeg_damage(other, header) is None and header[0] == other[: sos + 6 + _sos_length(data, sos)]


def _sos_length(data: bytes, sos: int) -> int:
    """Bytes from the start-of-scan marker to the end of its segment."""
    return 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def test_extract_does_not_complete_a_store_from_a_corrupt_tile(tmp_path: Path, sample_grid) -> None:
    from slidescope.features import open_store
    from slidescope.features.extract import extract_slides

    _, grid = sample_grid
    path, _, (tx, ty) = _damaged_copy(tmp_path, grid, "eoi")
    results = extract_slides(
        [path], "he-descriptor", store=tmp_path / "stores", device="cpu", num_workers=0, progress=False
    )
    assert results[0].status == "failed" and results[0].error_type == "SlideReadError"
    assert f"file tile ({tx}, {ty}) of level 0" in results[0].error
    store = tmp_path / "stores" / "damaged.zarr"
    if store.exists():  # a partial store may stay for resuming, but it never reads as complete
        with pytest.raises(Exception, match="(?i)incomplete|not complete|missing"):
            open_store(store).embeddings("he-descriptor")


# -- 7: decompression bombs and size limits ----------------------------------------------------------


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = forged_bomb(tmp_path / "bomb.tif", 60000, 60000)  # 10.8 GB of RGB declared in 1 strip
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(
            UnsupportedSlideError, match=r"60000x60000.*decode budget.*SLIDESCOPE_MAX_DECODE_MB="
        ):
            open_slide(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # nothing was decoded


def test_decode_budget_and_pixel_limit_can_be_lowered(tmp_path: Path, monkeypatch) -> None:
    import tifffile

    strip = tmp_path / "strip.tif"  # an ordinary single-strip TIFF: 1 MiB decoded in one piece
    tifffile.imwrite(
        strip,
        np.full((512, 683, 3), 200, np.uint8),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=512,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    with open_slide(strip) as slide:
        assert slide.dimensions == (683, 512)
    monkeypatch.setenv("SLIDESCOPE_MAX_DECODE_MB", "0.5")
    with pytest.raises(
        UnsupportedSlideError, match=r"strips of 512x683x3.*1 MiB.*SLIDESCOPE_MAX_DECODE_MB=2"
    ):
        open_slide(strip)
    monkeypatch.delenv("SLIDESCOPE_MAX_DECODE_MB")

    monkeypatch.setenv("SLIDESCOPE_MAX_IMAGE_PIXELS", str(4096 * 3072 - 1))
    with pytest.raises(UnsupportedSlideError, match=r"4096x3072 px.*SLIDESCOPE_MAX_IMAGE_PIXELS=12582912"):
        open_slide(SAMPLE)
    monkeypatch.setenv("SLIDESCOPE_MAX_IMAGE_PIXELS", str(4096 * 3072))
    with open_slide(SAMPLE) as slide:
        assert slide.dimensions == (4096, 3072)


def test_a_single_strip_level_is_decoded_once(tmp_path: Path, monkeypatch) -> None:
    import tifffile

    rgb = (np.random.default_rng(1).random((2048, 1536, 3)) * 255).astype(np.uint8)  # 9 MiB in one strip
    path = tmp_path / "onestrip.tif"
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        compression="zlib",
        rowsperstrip=2048,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    decodes = []
    original = tifffile.TiffPage.decode

    def counting(self):
        decode = original.__get__(self, type(self))

        def wrapped(*args, **kwargs):
            decodes.append(1)
            return decode(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    with open_slide(path) as slide:
        assert slide.backend == "tiffslide"  # OpenSlide refuses untiled TIFFs
        blocks = [slide.read_region((x, y), 0, (512, 512)) for y in (0, 1024) for x in (0, 512, 1024)]
    assert len(decodes) == 1  # used to be one decode of the whole strip per block
    assert np.array_equal(blocks[4], rgb[1024:1536, 512:1024])


def test_a_huge_region_is_refused(monkeypatch) -> None:
    from slidescope.errors import InvalidParameterError

    monkeypatch.setenv("SLIDESCOPE_MAX_DECODE_MB", "1")
    with open_slide(SAMPLE) as slide:
        with pytest.raises(InvalidParameterError, match="decode budget"):
            slide.read_region((0, 0), 0, (1024, 1024))
        assert slide.read_region((0, 0), 0, (256, 256)).shape == (256, 256, 3)


# -- 8: one malformed TIFF never stops a batch ------------------------------------------------------


def test_missing_tile_offsets_follow_the_backend(tmp_path: Path, sample_grid) -> None:
    _, grid = sample_grid
    path = forged_offsets(tmp_path / "short.tiff", 100)  # 192 tiles, 100 offsets
    with open_slide(path) as slide:
        # used to raise IndexError from the direct reader; the level now goes through the backend
        assert not slide.tile_source().has_level(0)
        tiles = dict(iter_tiles(slide, grid))
    assert len(tiles) == len(grid)


@pytest.mark.slow
def test_extract_batch_survives_a_malformed_tiff(tmp_path: Path) -> None:
    bad = forged_offsets(tmp_path / "short.tiff", 100)  # used to crash the batch with an IndexError
    broken = tmp_path / "broken.svs"  # opens, but one tile under tissue cannot be decoded by any reader
    shutil.copy(SAMPLE, broken)
    with open_slide(SAMPLE) as slide:
        grid = make_tile_grid(slide, tile_size=224, mpp=0.5)
    x, y = (int(v) for v in grid.coords[len(grid) // 2])
    corrupt_tile(broken, x // 256, y // 256, "eoi")
    out = run(
        "-q",
        "extract",
        str(SAMPLE),
        str(bad),
        str(broken),
        "--encoder",
        "he-descriptor",
        "--out",
        str(tmp_path / "stores"),
        "--num-workers",
        "1",
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "sample_slide.tiff: done" in out.stdout
    assert "short.tiff: done" in out.stdout  # read through the backend, as OpenSlide reads it
    assert "broken.svs: failed (SlideReadError: broken.svs: cannot decode the region" in out.stdout
    assert "file tile" in out.stdout and "Corrupt JPEG data" in out.stdout
    report = json.loads((tmp_path / "stores" / "reports" / "extract-latest.json").read_text())
    assert report["counts"] == {"done": 2, "failed": 1}


def test_unexpected_reader_error_fails_one_slide(tmp_path: Path, monkeypatch) -> None:
    from slidescope.features.extract import extract_slides

    def explode(self, level, x, y, w, h):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(_tiff.TiffTileSource, "read", explode)
    good2 = tmp_path / "good2.tiff"
    shutil.copy(SAMPLE, good2)
    results = extract_slides(
        [SAMPLE, good2], "he-descriptor", store=tmp_path / "s", device="cpu", num_workers=0, progress=False
    )
    assert [r.status for r in results] == ["failed", "failed"]  # each slide fails alone, the batch goes on
    assert results[1].error_type == "SlideReadError"
    assert "IndexError: tuple index out of range" in results[1].error and "re-export" in results[1].error


# -- 15: what is not an 8-bit RGB brightfield scan is named as such --------------------------------


@pytest.mark.parametrize(
    ("name", "dtype", "photometric", "shape", "expected"),
    [
        ("u16.tif", np.uint16, "rgb", (512, 512, 3), r"16-bit unsigned integer samples.*not corrupt"),
        ("f32.tif", np.float32, "rgb", (512, 512, 3), r"32-bit floating-point samples.*not corrupt"),
        ("grey.tif", np.uint8, "minisblack", (512, 512), r"greyscale image"),
        (
            "multiplex.qptiff",
            np.uint8,
            "minisblack",
            (4, 512, 512),
            r"multiplex/fluorescence image \(4 channels.*brightfield H&E/IHC",
        ),
    ],
)
def test_not_rgb_brightfield_is_refused_with_the_reason(
    tmp_path, name, dtype, photometric, shape, expected
) -> None:
    data = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    path = write_tiff(tmp_path / name, data, photometric=photometric)
    with pytest.raises(UnsupportedSlideError, match=expected) as info:
        open_slide(path)
    message = str(info.value)
    assert "probably corrupt" not in message and "8-bit RGB" in message
    assert ("convert" in message) != ("fluorescence" in message)  # a conversion hint only for brightfield


def test_ome_fluorescence_is_refused(tmp_path: Path) -> None:
    data = (np.random.default_rng(0).random((5, 512, 512)) * 255).astype(np.uint8)
    path = write_tiff(
        tmp_path / "if.ome.tif",
        data,
        photometric="minisblack",
        metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
    )
    with pytest.raises(
        UnsupportedSlideError, match=r"multiplex/fluorescence image \(5 channels.*brightfield H&E"
    ):
        open_slide(path)


def test_rgb_slides_still_open(tmp_path: Path, fixtures_dir: Path) -> None:
    rgba = np.full((512, 512, 4), 255, np.uint8)
    with open_slide(write_tiff(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=[2])) as slide:
        assert slide.level_count == 1
    for name in ("boxes.tiff", "small.svs"):
        with open_slide(fixtures_dir / name) as slide:
            assert slide.dimensions[0] > 0


@pytest.mark.parametrize("pixels_per_cm", [1e9, 1.0])  # 1e-5 and 1e4 µm/px
def test_implausible_pixel_size_is_treated_as_missing(tmp_path: Path, pixels_per_cm: float) -> None:
    import tifffile

    rgb = np.full((512, 512, 3), 220, np.uint8)
    path = tmp_path / "absurd.tif"
    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        photometric="rgb",
        resolution=(pixels_per_cm, pixels_per_cm),
        resolutionunit="CENTIMETER",
    )
    with (
        open_slide(path) as slide,
        pytest.raises(MissingMppError, match=r"not a microscope.*0\.02-50.*--slide-mpp"),
    ):
        _ = slide.mpp


def test_info_on_an_undecodable_slide_is_one_error_line(fixtures_dir: Path) -> None:
    out = run("info", str(fixtures_dir / "unreadable.svs"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: SlideReadError: unreadable.svs:")
