"""The fastslide backend: an alternative reader (the ``fastslide`` extra), chosen by ``--backend fastslide``.

fastslide (Apache-2.0, a C++ reader with its own TIFF, JPEG, MRXS, CZI, VSI and iSyntax decoders) reads
many of the formats that OpenSlide and tiffslide read. It is never picked by ``auto`` for a file another
reader claims (it declares no extensions and comes last), because on our test files it differs from them:

- JPEG tiles are decoded by another JPEG decoder than OpenSlide's and tiffslide's libjpeg-turbo: pixels
  differ by at most 2 grey levels on the real Aperio file ``CMU-1-Small-Region.svs`` (60 % of values
  differ by 1 or 2), and by up to 24 at sharp colour edges of the synthetic JPEG pyramid (chroma
  upsampling). Lossless (deflate) tiles are identical.
- A TIFF tagged RGB whose JPEG tiles are JFIF (YCbCr) streams, as QuPath writes OME-TIFF, comes back
  as YCbCr values (wrong colours, mean error 34 grey levels on ``OS-1-detail.ome.tif``): such a file is
  refused here, with the reader to use instead.
- Pyramid levels kept in OME-TIFF SubIFDs, and the reduced pages of some generic TIFFs, are not seen:
  the slide then has fewer levels (coarser reads are area-averaged from the levels it has).

Only 8-bit RGB images with one focal plane and one time point are read; a missing pixel size (fastslide
gives 0) is ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, SlideReadError, UnsupportedSlideError
from ._backends import TIFF_MAGIC, Backend, _float, _head, register_backend

__all__ = ["FastSlideBackend"]

#: TIFF compression 7 (JPEG) and photometric 2 (RGB)
_JPEG, _RGB = 7, 2


def _import() -> Any:
    try:
        import fastslide  # type: ignore[import-untyped]
    except ImportError as err:
        raise MissingDependencyError(
            "the fastslide backend needs fastslide: pip install 'slidescope[fastslide]'"
        ) from err
    return fastslide


def _rgb_jpeg_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF tagged RGB whose JPEG tiles are JFIF streams (YCbCr by the JFIF standard).

    fastslide 0.8 returns such tiles' YCbCr values as if they were RGB (checked on ``OS-1-detail.ome.tif``:
    its output equals the YCbCr of libjpeg's decode within JPEG rounding). Aperio's JPEG tiles, tagged RGB
    too but without a JFIF marker, are converted correctly."""
    if not any(_head(path).startswith(m) for m in TIFF_MAGIC):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            if int(page.compression) != _JPEG or int(page.photometric) != _RGB or not page.dataoffsets:
                return False
            tif.filehandle.seek(page.dataoffsets[0])
            return b"JFIF" in tif.filehandle.read(min(64, page.databytecounts[0]))
    except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: fastslide says why when it opens it
        return False


@register_backend
class FastSlideBackend(Backend):
    """fastslide: SVS, NDPI, MRXS, tiled TIFF, OME-TIFF, QPTIFF, CZI, VSI... (``--backend fastslide``)."""

    name = "fastslide"
    extensions = ()  # opt-in: never claims a file in ``auto`` (its pixels differ, see the module notes)
    priority = 95  # tried last when no reader claims a file
    thread_safe = True  # fastslide releases the GIL during reads and serves concurrent threads
    direct_tiff = False  # its pixels come from its own decoders

    def __init__(self, path: Path) -> None:
        fastslide = _import()
        if _rgb_jpeg_tiff(path):
            raise UnsupportedSlideError(
                f"fastslide {fastslide.__version__} returns the JFIF (YCbCr) JPEG tiles of {path.name}, "
                f"tagged RGB, without colour conversion (wrong colours); read it with --backend tiffslide "
                f"(or auto)"
            )
        try:
            self._slide = fastslide.FastSlide.from_file_path(str(path))
        except Exception as err:  # noqa: BLE001 - RuntimeError/ValueError for the files it refuses
            raise UnsupportedSlideError(f"fastslide cannot open {path.name}: {err}") from err
        try:
            self._check(path)
        except UnsupportedSlideError:
            self._slide.close()
            raise
        self.library = f"fastslide {fastslide.__version__}"
        s = self._slide
        self.level_dimensions = tuple((int(w), int(h)) for w, h in s.level_dimensions)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple(float(d) for d in s.level_downsamples)
        self.properties = {
            "openslide.vendor": str(s.format),
            "openslide.level-count": str(len(self.level_dimensions)),
            **{f"fastslide.{k}": str(v) for k, v in s.properties.items() if v is not None},
        }

    def _check(self, path: Path) -> None:
        s = self._slide
        if s.dtype != "uint8" or s.num_channels not in (3, 4):
            raise UnsupportedSlideError(
                f"{path.name}: fastslide reads {s.num_channels} channel(s) of {s.dtype}, not 8-bit RGB "
                f"brightfield pixels"
            )
        if s.z_count > 1 or s.t_count > 1:
            raise UnsupportedSlideError(
                f"{path.name} has {s.z_count} focal planes and {s.t_count} time points; slidescope reads one "
                f"image"
            )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        # the level pixel whose level-0 span holds the location (Slide maps level pixels to level 0 and back)
        x, y = int(location[0] / ds + 1e-9), int(location[1] / ds + 1e-9)
        try:
            image = self._slide.read_region((x, y), level, (int(size[0]), int(size[1])))
            return np.asarray(image.numpy())
        except Exception as err:  # noqa: BLE001 - decoder errors come back as RuntimeError
            raise SlideReadError(f"fastslide: {err}") from err

    def associated_image_names(self) -> list[str]:
        return sorted(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self._slide.associated_images[name].numpy())[..., :3]

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        mx, my = (_float(v) for v in self._slide.mpp)
        if mx is None or my is None:
            return None, "none"
        return (mx, my), f"fastslide {self._slide.format} metadata"

    def close(self) -> None:
        self._slide.close()
