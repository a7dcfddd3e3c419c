"""The generator's new home: the committed sample still comes out of it, and the old names still work
(with a DeprecationWarning that names the new place) until the next release."""

from __future__ import annotations

import importlib
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import slidescope.synthetic as synthetic

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sample_slide.tiff"
SAMPLE_MASK = REPO / "sample_data" / "sample_slide.tumour.png"


def test_committed_sample_is_what_the_generator_makes(tmp_path: Path) -> None:
    # sample_data/ was written by the generator before it moved out of slidescope.wsi: the same
    # arguments (sample_data/generate.py) must still give the same pixels on every page and the same mask
    params = generate_params()
    syn = synthetic.make_synthetic_slide(tmp_path / "sample.tiff", **params)
    with tifffile.TiffFile(SAMPLE) as old, tifffile.TiffFile(syn.path) as new:
        assert len(old.pages) == len(new.pages) == 5  # level 0, thumbnail, level 1, label, macro
        for page_old, page_new in zip(old.pages, new.pages, strict=True):
            assert page_old.description == page_new.description
            assert np.array_equal(page_old.asarray(), page_new.asarray())
    with Image.open(SAMPLE_MASK) as im:
        assert np.array_equal(np.asarray(im) == 255, syn.tumour_mask)


def generate_params() -> dict:
    """The keyword arguments sample_data/generate.py passes to make_synthetic_slide."""
    return dict(runpy.run_path(str(REPO / "sample_data" / "generate.py"), run_name="params")["PARAMS"])


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("slidescope.wsi", "make_synthetic_slide"),
        ("slidescope.wsi", "make_synthetic_cohort"),
        ("slidescope.wsi", "SyntheticSlide"),
        ("slidescope.wsi.synthetic", "make_synthetic_slide"),
        ("slidescope.wsi.synthetic", "make_synthetic_ihc_slide"),
        ("slidescope.wsi.synthetic", "SyntheticIHCSlide"),
        ("slidescope.wsi.synthetic", "IHC_OD_COUNTERSTAIN"),
        ("slidescope.wsi.cohort", "make_synthetic_cohort"),
        ("slidescope.wsi.cohort", "synthetic_report"),
    ],
)
def test_old_names_warn_and_give_the_new_objects(module: str, name: str) -> None:
    old = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} moved to slidescope\.synthetic\.{name}"):
        value = getattr(old, name)
    assert value is getattr(synthetic, name)


@pytest.mark.parametrize("module", ["slidescope.wsi", "slidescope.wsi.synthetic"])
def test_from_import_of_an_old_name_warns_at_the_importing_line(module: str) -> None:
    code = compile(f"\n\nfrom {module} import make_synthetic_slide\n", "user_script.py", "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, {})
    assert caught and all(w.category is DeprecationWarning for w in caught)
    assert {(w.filename, w.lineno) for w in caught} == {("user_script.py", 3)}


def test_wsi_no_longer_lists_or_invents_generator_names() -> None:
    import slidescope.wsi as wsi

    assert not {"make_synthetic_slide", "make_synthetic_cohort", "SyntheticSlide"} & set(wsi.__all__)
    assert not {"make_synthetic_slide", "make_synthetic_cohort", "SyntheticSlide"} & set(dir(wsi))
    with pytest.raises(AttributeError):
        _ = wsi.make_synthetic_slides  # a typo is still an AttributeError, not a warning
    with pytest.raises(ImportError):
        from slidescope.wsi.synthetic import _Renderer  # noqa: F401  (private names did not stay behind)


def test_import_wsi_does_not_load_the_generator() -> None:
    code = "import sys, slidescope, slidescope.wsi; print('slidescope.synthetic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
