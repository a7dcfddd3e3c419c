"""Tissue contours are simplified by our Douglas-Peucker (``simplify_chain``), not skimage's
``approximate_polygon``, whose module imports ``scipy.signal`` (seconds of ``slidescope tile`` start-up,
issue 19). The reference is skimage's function itself: the same points are kept, on random masks and on the
real slides' tissue contours, at several tolerances.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from slidescope.wsi import detect_tissue, open_slide
from slidescope.wsi._polygons import drop_collinear, mask_contours, simplify_chain


def _chains(mask: np.ndarray) -> list[np.ndarray]:
    """The contours mask_contours simplifies: traced on the padded mask, before and after drop_collinear."""
    out = []
    for rc in find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="high"):
        out += [rc, drop_collinear(rc)]
    return out


def _random_masks(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(19)
    masks = []
    for _ in range(n):
        smooth = ndimage.gaussian_filter(rng.random((70, 90)), float(rng.uniform(1.0, 4.0)))
        masks.append(smooth > np.quantile(smooth, rng.uniform(0.3, 0.8)))
    return masks


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.5])
def test_same_points_as_skimage_on_random_masks(tolerance: float) -> None:
    chains = [c for m in _random_masks(40) for c in _chains(m)]
    assert len(chains) > 300
    for rc in chains:
        np.testing.assert_array_equal(simplify_chain(rc, tolerance), approximate_polygon(rc, tolerance))


def test_same_points_as_skimage_on_the_real_slides(cmu_small: Path, ome_detail: Path) -> None:
    n = 0
    for path in (cmu_small, ome_detail):
        with open_slide(path) as slide:
            mask = detect_tissue(slide).mask
        for rc in _chains(mask):
            np.testing.assert_array_equal(simplify_chain(rc, 0.5), approximate_polygon(rc, 0.5))
            n += 1
    assert n > 4


def test_edge_cases() -> None:
    line = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    np.testing.assert_array_equal(simplify_chain(line, 0.5), line[[0, 2]])  # the middle point is on the line
    np.testing.assert_array_equal(simplify_chain(line, 0.0), line)  # tolerance 0: unchanged
    np.testing.assert_array_equal(simplify_chain(line[:2], 0.5), line[:2])
    ring = np.array([[0.0, 0.0], [0.0, 4.0], [4.0, 4.0], [4.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(simplify_chain(ring, 0.5), approximate_polygon(ring, 0.5))


def test_contours_equal_those_simplified_by_skimage(cmu_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slidescope.wsi import _polygons

    with open_slide(cmu_small) as slide:
        mask = detect_tissue(slide).mask
    ours = mask_contours(mask, (8.0, 8.0))
    monkeypatch.setattr(_polygons, "simplify_chain", lambda rc, tol: approximate_polygon(rc, tolerance=tol))
    theirs = mask_contours(mask, (8.0, 8.0))
    assert len(ours[0]) == len(theirs[0]) > 0
    for a, b in zip(ours[0], theirs[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_tracing_contours_does_not_import_scipy_signal() -> None:
    code = (
        "import sys, numpy as np\n"
        "from slidescope.wsi._polygons import mask_contours\n"
        "m = np.zeros((20, 20), bool); m[5:15, 4:12] = True\n"
        "assert len(mask_contours(m, (1.0, 1.0))[0]) == 1\n"
        "print('scipy.signal' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
