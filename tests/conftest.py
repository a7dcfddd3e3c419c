"""Shared fixtures: the real test slides and small synthetic pyramids written with tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from realdata import real_dir, real_file

REPO = Path(__file__).resolve().parents[1]


# The real test files: located, checked against tests/realdata.sha256, skipped when missing (failed in
# CI). See tests/realdata.py.
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (``slides/``, ``fixtures/``), every listed file in it checked."""
    return real_dir("")


@pytest.fixture(scope="session")
def cmu_small() -> Path:
    return real_file("slides/CMU-1-Small-Region.svs")


@pytest.fixture(scope="session")
def ome_detail() -> Path:
    return real_file("slides/OS-1-detail.ome.tif")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder of small broken / odd files, every listed file in it checked."""
    return real_dir("fixtures")


def textured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-repeating RGB image (so misplaced reads show up as pixel differences)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02), rng.uniform(0, 6.28)
        img[..., c] = (
            128 + 60 * np.sin(xx * fx + ph) * np.cos(yy * fy) + 40 * np.sin((xx + yy) * 0.05 * (c + 1))
        )
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(
    path: Path,
    rgb: np.ndarray,
    *,
    mpp: float | None,
    levels: int = 3,
    tile: int = 256,
    compression: str | None = "jpeg",
    svs: bool = True,
) -> Path:
    """Write ``rgb`` as a tiled pyramid (downsample 2 per level), Aperio-style so both readers agree."""
    import tifffile
    from PIL import Image

    desc = "Aperio Image Library v12.0.0\r\n"
    desc += f"{rgb.shape[1]}x{rgb.shape[0]} [0,0 {rgb.shape[1]}x{rgb.shape[0]}] ({tile}x{tile}) JPEG/RGB Q=90"
    if mpp is not None:
        desc += f"|AppMag = {round(10 / mpp)}|MPP = {mpp}"
    kwargs = {"compression": compression, "photometric": "rgb", "tile": (tile, tile)}
    if compression == "jpeg":
        kwargs["compressionargs"] = {"level": 95}
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        img = rgb
        for level in range(levels):
            if level:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))
            tw.write(
                img,
                description=desc if (svs and level == 0) else None,
                subfiletype=1 if (level and not svs) else 0,
                metadata=None,
                **kwargs,
            )
            if level == 0 and svs:  # Aperio layout: page 1 is a stripped thumbnail, readers rely on it
                h, w = img.shape[:2]
                thumb = np.asarray(Image.fromarray(img).resize((max(1, w // 16), max(1, h // 16))))
                tw.write(thumb, photometric="rgb", metadata=None, description="thumbnail")
    return path


@pytest.fixture
def pyramid(tmp_path: Path):
    """Factory: ``pyramid(width, height, mpp=0.25, levels=3, ...)`` -> path of a synthetic slide."""

    def make(width: int = 2048, height: int = 1536, *, mpp: float | None = 0.25, seed: int = 0, **kw) -> Path:
        path = tmp_path / f"pyr_{width}x{height}_{mpp}_{seed}.svs"
        return write_pyramid(path, textured_rgb(height, width, seed), mpp=mpp, **kw)

    return make
