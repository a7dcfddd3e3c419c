"""The reader contract, run over every registered backend.

Each backend reads synthetic files of its formats (a pyramid from ``slidescope.synthetic``, an OME-TIFF
pyramid and a flat TIFF written by tifffile, PNG/JPEG written by Pillow) and the real files in
``shared/data``; its pixels are compared with what another reader decodes from the same file (tifffile's
own page arrays, the array written to a lossless PNG, Pillow's JPEG decode): every level, regions inside,
across the right/bottom edges and fully outside (white), associated images, the pixel size and its
source, the declared tile shape. A backend registered from this module (reading ``.npy``) shows that
adding a reader needs no other file: it appears in ``auto``, in the option choices and the CLI, and the
viewer's reader uses it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidescope.errors import MissingMppError, UnsupportedSlideError
from slidescope.wsi import Backend, backend_names, open_slide, registered_backends
from slidescope.wsi import _backends

from realdata import REPO, in_ci, real_file

#: the repository's synthetic sample slide
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"


@dataclass
class Case:
    """A file, the backend that must read it, and the reference pixels of each of its levels."""

    backend: str
    path: Path
    levels: list[np.ndarray]
    mpp: tuple[float, float] | None
    mpp_source: str
    auto: bool = True  # ``auto`` picks this backend for this file
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    tiles: list[tuple[int, int] | None] | None = None  # the file's tile (w, h) per level, when known


def _tifffile_levels(path: Path) -> tuple[list[np.ndarray], list[tuple[int, int] | None]]:
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        arrays = [np.asarray(lv.asarray()) for lv in levels]
        tiles = [
            (int(lv.keyframe.tilewidth), int(lv.keyframe.tilelength)) if lv.keyframe.is_tiled else None
            for lv in levels
        ]
    return arrays, tiles


def _synthetic_svs(root: Path) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    path = root / "synthetic.svs"
    if not path.exists():
        make_synthetic_slide(path, width=1600, height=1100, n_levels=2, tile_size=256, mpp=0.5, seed=3)
    return path


def _ome_pyramid(root: Path) -> Path:
    """A two-level OME-TIFF pyramid (SubIFDs, deflate: lossless), as QuPath and bfconvert write them."""
    path = root / "pyramid.ome.tif"
    rng = np.random.default_rng(1)
    base = (rng.random((700, 900, 3)) * 255).astype(np.uint8)
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        opts: dict[str, Any] = {"tile": (128, 128), "compression": "zlib", "photometric": "rgb"}
        tw.write(
            base,
            subifds=1,
            metadata={
                "axes": "YXS",
                "PhysicalSizeX": 0.25,
                "PhysicalSizeY": 0.25,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeYUnit": "µm",
            },
            **opts,
        )
        tw.write(base[::2, ::2], subfiletype=1, **opts)
    return path


def _flat_tiff(root: Path) -> Path:
    path = root / "flat.tif"
    data = (np.random.default_rng(2).random((300, 500, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=16)  # strips, one page, no resolution
    return path


def _png(root: Path) -> tuple[Path, np.ndarray]:
    path = root / "plain.png"
    data = (np.random.default_rng(4).random((333, 451, 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path, data


def _jpeg(root: Path) -> tuple[Path, np.ndarray]:
    path = root / "plain.jpg"
    data = (np.random.default_rng(5).random((257, 389, 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path, quality=90, dpi=(50800, 50800))  # 0.5 µm/px in JFIF density
    with Image.open(path) as im:
        decoded = np.asarray(im.convert("RGB"))
    return path, decoded


def _ome_zarr(path: Path, zarr_format: int, channels: int = 3) -> list[np.ndarray]:
    """An OME-NGFF image with two levels (CYX, 128 px chunks): NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3."""
    import zarr

    base = (np.random.default_rng(6).random((600, 800, channels)) * 255).astype(np.uint8)
    levels = [base, base[::2, ::2]]
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    for i, level in enumerate(levels):
        group.create_array(str(i), data=np.moveaxis(level, 2, 0).copy(), chunks=(channels, 128, 128))
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")
    ]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, s, s]}]}
        for i, s in enumerate((0.25, 0.5))
    ]
    version = "0.4" if zarr_format == 2 else "0.5"
    multiscales = [{"version": version, "axes": axes, "datasets": datasets}]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    return levels


def _tiled_pyramid(root: Path) -> tuple[Path, list[np.ndarray]]:
    """A generic tiled TIFF pyramid, lossless (deflate), its reduced level a second page: 0.25 µm/px."""
    path = root / "tiled-deflate.tif"
    base = (np.random.default_rng(8).random((700, 900, 3)) * 255).astype(np.uint8)
    opts: dict[str, Any] = {"tile": (128, 128), "compression": "zlib", "photometric": "rgb"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, resolution=(40000, 40000), resolutionunit="CENTIMETER", **opts)
        tw.write(base[::2, ::2], subfiletype=1, **opts)
    return path, [base, base[::2, ::2]]


def _czi(root: Path) -> tuple[Path, list[np.ndarray]]:
    """A CZI written by pylibCZIrw with two pyramid layers (factors 2 and 4), 0.25 µm/px."""
    from czi_files import write_czi

    path = root / "pyramid.czi"
    rgb = (np.random.default_rng(9).random((600, 800, 3)) * 255).astype(np.uint8)
    return path, write_czi(path, rgb, 0.25, factors=(2, 4))


def _dicom(root: Path, svs: Path) -> Case | None:
    """The synthetic SVS as a DICOM-WSI series written by wsidicomizer (tiffslide source: JPEG frames), with
    OpenSlide's decode of that series as the reference; None when wsidicom/wsidicomizer are not installed."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's import and run: it only writes the test file
            from wsidicomizer import WsiDicomizer
            from wsidicomizer.wsidicomizer import SourceIdentifier

            out = root / "series-dicom"
            WsiDicomizer.convert(
                svs, out, preferred_source=SourceIdentifier.TIFFSLIDE, workers=1, tile_size=256
            )
    except ImportError:
        return None
    import openslide

    with openslide.OpenSlide(str(sorted(out.glob("*.dcm"))[0])) as reference:
        levels = [
            np.asarray(reference.read_region((0, 0), i, d)) for i, d in enumerate(reference.level_dimensions)
        ]
    return Case(
        "wsidicom",
        out,
        levels,
        (0.5, 0.5),
        "DICOM PixelSpacing (Pixel Measures)",
        auto=False,
        tiles=[(256, 256)] * len(levels),
    )


def _cases(root: Path) -> dict[str, Case]:
    svs = _synthetic_svs(root)
    dicom = _dicom(root, svs)
    svs_levels, svs_tiles = _tifffile_levels(svs)
    ome = _ome_pyramid(root)
    ome_levels, ome_tiles = _tifffile_levels(ome)
    flat = _flat_tiff(root)
    flat_levels, _ = _tifffile_levels(flat)
    png, png_data = _png(root)
    jpg, jpg_data = _jpeg(root)
    zarr2, zarr3 = root / "v04.ome.zarr", root / "v05.ome.zarr"
    zarr2_levels, zarr3_levels = _ome_zarr(zarr2, 2), _ome_zarr(zarr3, 3)
    tiled, tiled_levels = _tiled_pyramid(root)
    czi, czi_levels = _czi(root)
    aperio = "Aperio ImageDescription (MPP)"
    return {
        "openslide-svs": Case("openslide", svs, svs_levels, (0.5, 0.5), aperio, tiles=svs_tiles),
        "tiffslide-svs": Case("tiffslide", svs, svs_levels, (0.5, 0.5), aperio, auto=False, tiles=svs_tiles),
        "tiffslide-ome": Case(
            "tiffslide", ome, ome_levels, (0.25, 0.25), "OME-XML PhysicalSizeX/Y", tiles=ome_tiles
        ),
        "tiffslide-flat": Case(
            "tiffslide",
            flat,
            flat_levels,
            (0.7, 0.7),
            "filled in",
            open_kwargs={"slide_mpp": 0.7},
            tiles=[None],
        ),
        "pil-flat-tiff": Case(
            "pil", flat, flat_levels, (0.7, 0.7), "filled in", auto=False, open_kwargs={"slide_mpp": 0.7}
        ),
        "pil-png": Case("pil", png, [png_data], (0.4, 0.4), "filled in", open_kwargs={"slide_mpp": 0.4}),
        "pil-jpeg": Case("pil", jpg, [jpg_data], (0.5, 0.5), "JPEG resolution (dpi)"),
        "ome-zarr-0.4": Case(
            "ome-zarr",
            zarr2,
            zarr2_levels,
            (0.25, 0.25),
            "OME-NGFF multiscales (scale transformation)",
            tiles=[(128, 128)] * 2,
        ),
        "ome-zarr-0.5": Case(
            "ome-zarr",
            zarr3,
            zarr3_levels,
            (0.25, 0.25),
            "OME-NGFF multiscales (scale transformation)",
            tiles=[(128, 128)] * 2,
        ),
        "czi-pyramid": Case(
            "czi",
            czi,
            czi_levels,
            (0.25, 0.25),
            "CZI metadata (Scaling/Distance)",
            tiles=[(800, 600), (400, 300), (200, 150)],
        ),
        "fastslide-tiff": Case(
            "fastslide",
            tiled,
            tiled_levels,
            (0.25, 0.25),
            "fastslide Generic TIFF metadata",
            auto=False,
        ),
        **({"wsidicom-dicom": dicom} if dicom is not None else {}),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return _cases(tmp_path_factory.mktemp("contract"))


CASE_NAMES = [
    "openslide-svs",
    "tiffslide-svs",
    "tiffslide-ome",
    "tiffslide-flat",
    "pil-flat-tiff",
    "pil-png",
    "pil-jpeg",
    "ome-zarr-0.4",
    "ome-zarr-0.5",
    "wsidicom-dicom",
    "czi-pyramid",
    "fastslide-tiff",
]


def test_every_registered_backend_has_a_case() -> None:
    covered = {
        name.rsplit("-", 1)[0] if name.startswith("ome-zarr") else name.split("-")[0] for name in CASE_NAMES
    }
    assert set(backend_names()) == covered, "a registered backend without a contract case"


def _level0(slide: Any, level: int, x: int, y: int) -> tuple[int, int]:
    """The level-0 location whose floor division by the level's downsample is level pixel (x, y)."""
    w0, h0 = slide.dimensions
    lw, lh = slide.level_dimensions[level]
    return int(np.ceil(x * w0 / lw - 1e-9)), int(np.ceil(y * h0 / lh - 1e-9))


def check_contract(slide: Any, levels: list[np.ndarray], tiles: list[tuple[int, int] | None] | None) -> None:
    """What every backend must satisfy on a file whose level pixels are ``levels`` (RGB, from another reader)."""
    assert slide.level_count == len(levels)
    for level, ref in enumerate(levels):
        ref = ref[..., :3]
        lh, lw = ref.shape[:2]
        assert tuple(slide.level_dimensions[level]) == (lw, lh)
        rng = np.random.default_rng(level)
        for _ in range(3):  # inside
            w, h = int(rng.integers(1, min(lw, 200))), int(rng.integers(1, min(lh, 200)))
            x, y = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
            got = slide.read_region(_level0(slide, level, x, y), level, (w, h))
            assert got.dtype == np.uint8 and got.shape == (h, w, 3)
            np.testing.assert_array_equal(got, ref[y : y + h, x : x + w])
        # across the bottom-right corner: the inside part is the image, the rest white
        x, y, w, h = lw - 7, lh - 5, 20, 16
        got = slide.read_region(_level0(slide, level, x, y), level, (w, h))
        np.testing.assert_array_equal(got[:5, :7], ref[y:, x:])
        assert (got[5:] == 255).all() and (got[:, 7:] == 255).all()
        # across the top-left corner (negative coordinates)
        got = slide.read_region(_level0(slide, level, -3, -4), level, (10, 10))
        np.testing.assert_array_equal(got[4:, 3:], ref[:6, :7])
        assert (got[:4] == 255).all() and (got[:, :3] == 255).all()
        # wholly outside
        w0, h0 = slide.dimensions
        assert (slide.read_region((w0 + 10, h0 + 10), level, (8, 8)) == 255).all()
        assert (slide.read_region((-100, 0), level, (8, 8)) == 255).all()
        shape = slide.tile_shape(level)
        assert shape is None or (shape[0] > 0 and shape[1] > 0)
        if tiles is not None:
            assert shape == tiles[level]
    for name, image in slide.associated_images.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert isinstance(slide.thread_safe, bool)
    if not type(slide._backend).direct_tiff:
        assert slide.tile_source() is None


@pytest.mark.parametrize("name", CASE_NAMES)
def test_backend_contract_on_synthetic_files(cases: dict[str, Case], name: str) -> None:
    if name not in cases:  # wsidicom-dicom: the converter is a development dependency
        if in_ci():
            pytest.fail(f"{name}: wsidicom/wsidicomizer are not installed (development dependencies)")
        pytest.skip(f"{name}: wsidicom and wsidicomizer are not installed")
    case = cases[name]
    with open_slide(case.path, backend=case.backend, **case.open_kwargs) as slide:
        assert slide.backend == case.backend
        check_contract(slide, case.levels, case.tiles)
        assert slide.mpp == pytest.approx(case.mpp)
        assert slide.mpp_source == case.mpp_source
        assert slide.reader  # library and version, for provenance
    if case.auto:
        with open_slide(case.path, **case.open_kwargs) as slide:
            assert slide.backend == case.backend, f"auto should pick {case.backend} for {case.path.name}"


def test_synthetic_pyramid_has_associated_images(cases: dict[str, Case]) -> None:
    for backend in ("openslide", "tiffslide"):
        with open_slide(cases["openslide-svs"].path, backend=backend) as slide:
            assert {"label", "macro"} <= set(slide.associated_images), backend


def test_plain_image_needs_a_pixel_size(cases: dict[str, Case]) -> None:
    with open_slide(cases["pil-png"].path) as slide:
        assert slide.backend == "pil" and slide.level_count == 1
        with pytest.raises(MissingMppError, match="--slide-mpp"):
            slide.mpp
    with open_slide(cases["pil-png"].path, force_slide_mpp=0.3) as slide:
        assert slide.mpp == (0.3, 0.3) and slide.mpp_source == "user"


def test_info_opens_a_png_with_slide_mpp(cases: dict[str, Case]) -> None:
    import json

    from typer.testing import CliRunner

    from slidescope.cli import app

    path = cases["pil-png"].path
    result = CliRunner().invoke(app, ["info", str(path), "--slide-mpp", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backend"] == "pil" and report["dimensions"] == [451, 333]
    assert report["mpp"] == [0.5, 0.5] and report["mpp_source"] == "filled in"
    bare = CliRunner().invoke(app, ["info", str(path)])
    assert bare.exit_code == 0 and "--slide-mpp" in bare.output  # says what to pass
    shown = CliRunner().invoke(app, ["info", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert "auto, openslide, tiffslide" in shown.output and "ome-zarr" in shown.output  # from the registry


def test_info_opens_an_ome_zarr_folder(cases: dict[str, Case]) -> None:
    import json

    from typer.testing import CliRunner

    from slidescope.cli import app

    for name in ("ome-zarr-0.4", "ome-zarr-0.5"):
        result = CliRunner().invoke(app, ["info", str(cases[name].path), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["backend"] == "ome-zarr" and report["level_dimensions"] == [[800, 600], [400, 300]]
        assert report["mpp"] == [0.25, 0.25] and report["mpp_source"] == cases[name].mpp_source


def test_plain_image_over_the_decode_budget_is_refused(cases: dict[str, Case], monkeypatch) -> None:
    monkeypatch.setenv("SLIDESCOPE_MAX_DECODE_MB", "0.1")  # 100 KiB: the 451x333 PNG decodes to 600 KB
    with pytest.raises(UnsupportedSlideError, match="decode budget") as info:
        open_slide(cases["pil-png"].path, slide_mpp=0.5)
    assert getattr(info.value, "definitive", False)


def test_plain_greyscale_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(UnsupportedSlideError, match="'L' image.*not 8-bit RGB"):
        open_slide(path, slide_mpp=0.5)


def test_pil_refuses_tiled_and_multipage_tiffs(cases: dict[str, Case]) -> None:
    with pytest.raises(UnsupportedSlideError, match="pages|tiled"):
        open_slide(cases["openslide-svs"].path, backend="pil")


def test_ome_zarr_multiplex_is_refused_and_a_store_is_not_a_slide(tmp_path: Path) -> None:
    from slidescope.errors import SlideNotFoundError
    from slidescope.wsi import expand_slides

    path = tmp_path / "if.ome.zarr"
    _ome_zarr(path, 3, channels=5)
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    _one_line_fluorescence(info.value, path.name, 5)
    store = tmp_path / "stores" / "slide.zarr"  # a zarr group without multiscales, like slidescope's stores
    import zarr

    zarr.open_group(str(store), mode="w").attrs["format"] = "slidescope.slide-store"
    with pytest.raises(SlideNotFoundError, match="is a directory"):
        open_slide(store)
    rgb = tmp_path / "rgb.ome.zarr"
    _ome_zarr(rgb, 2)
    assert expand_slides([rgb]) == [rgb]  # an OME-Zarr folder given as input is one slide


# -- the real files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "readers"),
    [
        ("slides/CMU-1-Small-Region.svs", ("openslide", "tiffslide")),
        ("slides/OS-1-detail.ome.tif", ("tiffslide",)),
    ],
)
def test_backend_contract_on_real_files(name: str, readers: tuple[str, ...]) -> None:
    path = real_file(name)
    levels, tiles = _tifffile_levels(path)
    with open_slide(path) as slide:
        assert slide.backend == readers[0]
    for backend in readers:
        with open_slide(path, backend=backend) as slide:
            check_contract(slide, levels, tiles)
            assert slide.has_mpp and slide.mpp_source not in ("user", "filled in")


# -- fluorescence and multiplex ---------------------------------------------------------------------------

_QPI_XML = (
    '<?xml version="1.0" encoding="utf-8"?><PerkinElmer-QPI-ImageDescription><DescriptionVersion>2'
    "</DescriptionVersion><ImageType>FullResolution</ImageType><Name>{name}</Name><Color>0,0,255</Color>"
    "<ScanProfile>{{}}</ScanProfile></PerkinElmer-QPI-ImageDescription>"
)


def _qptiff(path: Path, channels: list[str]) -> Path:
    """A Vectra-like QPTIFF: one tiled uint8 grey page per channel, each with PerkinElmer XML."""
    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(path) as tw:
        for name in channels:
            plane = (rng.random((512, 512)) * 40).astype(np.uint8)  # fluorescence: dark background
            tw.write(
                plane,
                photometric="minisblack",
                tile=(256, 256),
                description=_QPI_XML.format(name=name),
                software="PerkinElmer-QPI",
                metadata=None,
            )
    return path


def _one_line_fluorescence(err: UnsupportedSlideError, name: str, n: int) -> None:
    message = str(err)
    assert message.startswith(f"{name} is a multiplex/fluorescence image ({n} channels")
    assert "brightfield H&E/IHC" in message and "\n" not in message and "pale" not in message
    assert getattr(err, "definitive", False)


def test_multiplex_qptiff_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _qptiff(tmp_path / "vectra.qptiff", ["DAPI", "CD8", "PD-L1", "FoxP3", "CK", "Autofluorescence"])
    for backend in ("auto", *backend_names()):
        with pytest.raises(UnsupportedSlideError) as info:
            open_slide(path, backend=backend, slide_mpp=0.5)
        _one_line_fluorescence(info.value, path.name, 6)
    assert "DAPI, CD8" in str(info.value)


def test_ome_tiff_with_four_channels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "if.ome.tif"
    data = (np.random.default_rng(0).random((4, 256, 256)) * 30).astype(np.uint8)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "CYX", "Channel": {"Name": ["a", "b", "c", "d"]}},
    )
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    _one_line_fluorescence(info.value, path.name, 4)


def test_uint16_channels_are_fluorescence(tmp_path: Path) -> None:
    path = tmp_path / "if16.tif"
    tifffile.imwrite(
        path, np.zeros((3, 128, 128), np.uint16), photometric="minisblack", metadata={"axes": "CYX"}
    )
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    _one_line_fluorescence(info.value, path.name, 3)
    assert "uint16" in str(info.value)


def test_brightfield_qptiff_is_not_refused(tmp_path: Path) -> None:
    """A Polaris brightfield QPTIFF carries the same PerkinElmer XML, but its pages are RGB."""
    path = tmp_path / "bf.qptiff"
    rgb = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        description=_QPI_XML.format(name="Brightfield"),
        software="PerkinElmer-QPI",
        metadata=None,
    )
    with open_slide(path, slide_mpp=0.5) as slide:
        np.testing.assert_array_equal(slide.read_region((10, 20), 0, (30, 40)), rgb[20:60, 10:40])


def test_multiplex_in_a_batch_fails_alone_with_the_fluorescence_line(tmp_path: Path) -> None:
    from slidescope.features.extract import extract_slides

    path = _qptiff(tmp_path / "vectra.qptiff", ["DAPI", "CD3", "CD20", "Ki67"])
    results = extract_slides(
        [path, SAMPLE], "he-descriptor", store=tmp_path / "s", device="cpu", num_workers=0, progress=False
    )
    assert [r.status for r in results][0] == "failed" and results[1].status != "failed"
    error = results[0].error or ""
    assert "multiplex/fluorescence image (4 channels" in error and "pale" not in error


# -- a backend added from outside: one class and its registration, no other file -------------------------


class NpyBackend(Backend):
    """Reads a (h, w, 3) uint8 ``.npy`` array as a one-level slide; its 'tiles' are 64 x 32 px."""

    name = "npy-test"
    extensions = (".npy",)
    magic = (b"\x93NUMPY",)
    priority = 50
    thread_safe = True
    direct_tiff = False

    def __init__(self, path: Path) -> None:
        self._array = np.load(path, mmap_mode="r")
        h, w = self._array.shape[:2]
        self.library = f"numpy {np.__version__}"
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties = {"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5"}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        (x, y), (w, h) = location, size
        return np.asarray(self._array[y : y + h, x : x + w])

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        return (64, 32)

    def associated_image_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        return (0.5, 0.5), "npy test metadata"


@pytest.fixture
def npy_backend(monkeypatch: pytest.MonkeyPatch) -> type[Backend]:
    registered_backends()  # built-ins and plugins loaded first, so the test's registration is the last
    monkeypatch.setattr(_backends, "BACKENDS", dict(_backends.BACKENDS))
    _backends.register_backend(NpyBackend)
    return NpyBackend


@pytest.fixture
def npy_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = (np.random.default_rng(7).random((150, 230, 3)) * 255).astype(np.uint8)
    path = tmp_path / "array.npy"
    np.save(path, data)
    return path, data


def test_a_registered_backend_is_used_everywhere(npy_backend, npy_file, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slidescope.cli import app
    from slidescope.options import TilingOptions, option_info
    from slidescope.viewer._reader import SlideLevel, get_reader, read_slide
    from slidescope.wsi._backends import auto_order

    path, data = npy_file
    assert auto_order(path)[0] == "npy-test"  # in auto, before the readers that only sniff or fall back
    with open_slide(path) as slide:  # auto
        assert slide.backend == "npy-test" and slide.mpp_source == "npy test metadata"
        check_contract(slide, [data], [(64, 32)])
        level = SlideLevel(slide, 0, threading.Lock())  # the viewer: chunk shape and parallel reads
        assert level.tile_shape == (32, 64) and level._parallel
        np.testing.assert_array_equal(level[10:20, 30:50], data[10:20, 30:50])
    assert "npy-test" in (option_info(TilingOptions, "backend").allowed() or ())  # CLI and config choices
    assert get_reader(str(path)) is read_slide  # napari hands the file to slidescope
    assert get_reader(str(tmp_path / "figure.png")) is None  # plain pictures stay with napari's own reader
    from slidescope.wsi import expand_slides

    Image.fromarray(data).save(tmp_path / "figure.png")
    assert expand_slides([tmp_path]) == [path]  # the plugin's files are listed from a folder, PNGs are not
    result = CliRunner().invoke(app, ["info", str(path), "--backend", "npy-test", "--json"])
    assert result.exit_code == 0, result.output
    assert '"backend": "npy-test"' in result.output


def test_entry_point_plugins_load_lazily_and_a_broken_one_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``slidescope.readers`` group goes through the shared plugin loader: a module that registers a
    backend when imported is loaded on the registry's first use; a broken one is logged and listed."""
    import importlib.metadata
    import sys
    import types

    from slidescope import _plugins

    module = types.ModuleType("lab_npy_reader")

    def load_module() -> Any:
        _backends.register_backend(NpyBackend)  # what the plugin module does when imported
        return module

    class EP:
        def __init__(self, name: str, load: Any) -> None:
            self.name, self.value, self.load = name, f"lab.{name}", load

        def missing(self) -> Any:
            raise ImportError("No module named 'czi_reader'")

    broken = EP("broken", None)
    broken.load = broken.missing
    eps = [EP("npy", load_module), broken]
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: eps if group == "slidescope.readers" else []
    )
    monkeypatch.setitem(sys.modules, "lab_npy_reader", module)
    monkeypatch.setattr(
        _backends, "BACKENDS", {k: v for k, v in _backends.BACKENDS.items() if k != "npy-test"}
    )
    monkeypatch.setattr(_backends, "_BUILTINS_ONCE", _plugins.Once())
    _plugins._reset_for_tests()
    try:
        with caplog.at_level(logging.WARNING):
            assert "npy-test" not in _backends.BACKENDS  # nothing loaded before the registry is asked
            names = backend_names()  # first ask: loads the plugins (a Python warning would fail: errors)
        assert "npy-test" in names and {"openslide", "tiffslide", "pil", "ome-zarr"} <= set(names)
        assert "czi_reader" in _plugins.plugin_failures("readers")["broken"]
        assert any("broken" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    finally:
        _plugins._reset_for_tests()
