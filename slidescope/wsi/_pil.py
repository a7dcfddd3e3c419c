"""The plain-image backend: PNG, JPEG and flat (untiled, single-page) TIFF read with Pillow.

A plain image is one level: no pyramid is derived (coarser reads go through
:func:`slidescope.wsi.Slide.get_thumbnail` and the tile streamer, which area-average level 0; a plain
image small enough to be decoded whole is small enough for that). The whole image is decoded on the
first read and kept, so it must fit the per-read decode budget (``SLIDESCOPE_MAX_DECODE_MB``, default
512 MiB, about 179 megapixels of RGB): a larger image, or one whose header declares more than that (a
decompression bomb), is refused before anything is decoded. Pillow's own bomb guard
(``PIL.Image.MAX_IMAGE_PIXELS``) is replaced by this limit, which is the same for every backend.

Such images carry no usable pixel size (PNG's pHYs and JPEG's JFIF density are 72 or 96 dpi when set at
all): give it with ``--slide-mpp`` / ``slide_mpp=`` (or ``--force-slide-mpp``). A density that is a
plausible microscope pixel size is used, with its source named. Greyscale, 16-bit and multi-page images
are refused with the reason: slidescope reads 8-bit RGB brightfield images.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UnsupportedSlideError
from ._backends import Backend, TIFF_MAGIC, _definitive, _float, max_decode_bytes, register_backend

__all__ = ["PilBackend"]

#: Pillow modes read as RGB (palette images are expanded; transparency is composited on white by Slide)
_RGB_MODES = ("RGB", "RGBA", "P", "PA", "RGBa")
#: µm per inch, for a density given in dots per inch
_UM_PER_INCH = 25400.0


@register_backend
class PilBackend(Backend):
    """Pillow: plain PNG, JPEG and flat TIFF images (one level; the pixel size must be given)."""

    name = "pil"
    extensions = (".png", ".jpg", ".jpeg")
    magic = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", *TIFF_MAGIC)
    priority = 90  # after the slide readers: a TIFF is read here only when they refuse it
    thread_safe = True  # reads slice one decoded array; the decode itself is under a lock
    direct_tiff = False  # untiled: nothing for the tile decoder
    whole_slide_format = False  # PNG/JPEG are also thumbnails and figures: read only when named

    def __init__(self, path: Path) -> None:
        try:
            import PIL
            from PIL import Image
        except ImportError as err:  # pragma: no cover - Pillow is a core dependency
            raise MissingDependencyError("Pillow is not installed: `uv pip install pillow`") from err
        self.path = path
        try:
            with warnings.catch_warnings():
                # Pillow's bomb guard is replaced by the decode budget checked below from the header
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
        except Image.DecompressionBombError as err:
            raise self._too_big(path, None) from err
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for files it cannot identify
            raise UnsupportedSlideError(
                f"Pillow cannot open {path.name}: {type(err).__name__}: {err}"
            ) from err
        self._image = image
        try:
            self._check(path, image)
        except UnsupportedSlideError:
            image.close()
            raise
        self.library = f"Pillow {PIL.__version__}"
        self.format = str(image.format)
        w, h = image.size
        self.dimensions = (int(w), int(h))
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)
        self.properties = {
            "openslide.vendor": f"plain {self.format}",
            "openslide.level-count": "1",
            "pil.mode": str(image.mode),
            **{f"pil.{k}": str(v) for k, v in image.info.items() if isinstance(v, str | int | float | tuple)},
        }
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _too_big(path: Path, size: tuple[int, int] | None) -> UnsupportedSlideError:
        budget = max_decode_bytes()
        what = f"a {size[0]}x{size[1]} px image" if size else "an image larger than Pillow's bomb guard"
        return _definitive(
            UnsupportedSlideError(
                f"{path.name}: {what} is decoded whole by Pillow, over the decode budget of "
                f"{budget / 2**20:.0f} MiB (SLIDESCOPE_MAX_DECODE_MB): convert it to a tiled pyramid "
                f"(`vips tiffsave in out.tif --tile --pyramid --compression jpeg`), or if you trust the file "
                f"raise the budget"
            )
        )

    def _check(self, path: Path, image: Any) -> None:  # a PIL.Image.Image
        if getattr(image, "n_frames", 1) > 1:
            raise UnsupportedSlideError(
                f"{path.name} has {image.n_frames} pages: not a plain image (a pyramid or a multi-page TIFF is "
                f"read by the slide backends)"
            )
        if image.format == "TIFF" and 322 in getattr(image, "tag_v2", {}):  # TileWidth
            raise UnsupportedSlideError(f"{path.name} is a tiled TIFF: read by the slide backends")
        if image.mode not in _RGB_MODES:
            raise _definitive(
                UnsupportedSlideError(
                    f"{path.name} is a {image.mode!r} image (Pillow mode), not 8-bit RGB: slidescope reads RGB "
                    f"brightfield images (H&E, IHC); convert it to 8-bit RGB first"
                )
            )
        w, h = image.size
        if int(w) * int(h) * 4 > max_decode_bytes():  # decoded as RGB(A) whole
            raise self._too_big(path, (int(w), int(h)))

    def _decoded(self) -> np.ndarray:
        with self._lock:
            if self._pixels is None:
                image: Any = self._image
                if image.mode in ("P", "PA", "RGBa"):
                    image = image.convert("RGBA")
                self._pixels = np.asarray(image)
                self._image.close()
            return self._pixels

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        (x, y), (w, h) = location, size
        return self._decoded()[y : y + h, x : x + w]

    def associated_image_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def mpp(self) -> tuple[tuple[float, float] | None, str]:
        dpi = self.properties.get("pil.dpi")
        if dpi is None:
            return None, "none"
        try:
            dx, dy = (float(v) for v in dpi.strip("()").split(","))
        except ValueError:
            return None, "none"
        mx, my = _float(_UM_PER_INCH / dx if dx else None), _float(_UM_PER_INCH / dy if dy else None)
        if mx is None or my is None:
            return None, "none"
        return (mx, my), f"{self.format} resolution (dpi)"

    def close(self) -> None:
        self._pixels = None
        self._image.close()
