"""Renamed public names (docs/GLOSSARY.md): the old spelling still works for one release, with a
DeprecationWarning that names the new one; giving both spellings is an error."""

from __future__ import annotations

import dataclasses
import doctest
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import slidescope._compat
from slidescope.errors import InvalidParameterError
from slidescope.wsi import TissueMask, open_slide


def test_compat_examples_run() -> None:
    result = doctest.testmod(slidescope._compat, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# -- open_slide: mpp -> force_slide_mpp, default_mpp -> slide_mpp ----------------------------------


def test_open_slide_mpp_is_now_force_slide_mpp(cmu_small: Path) -> None:
    with pytest.warns(
        DeprecationWarning, match=r"open_slide\(mpp=\.\.\.\).*open_slide\(force_slide_mpp=\.\.\.\)"
    ):
        old = open_slide(cmu_small, mpp=0.3)
    new = open_slide(cmu_small, force_slide_mpp=0.3)
    assert old.mpp == new.mpp == (0.3, 0.3) and old.mpp_source == new.mpp_source == "user"


def test_open_slide_default_mpp_is_now_slide_mpp(pyramid) -> None:
    path = pyramid(512, 512, mpp=None, levels=1)
    with pytest.warns(
        DeprecationWarning, match=r"open_slide\(default_mpp=\.\.\.\).*open_slide\(slide_mpp=\.\.\.\)"
    ):
        old = open_slide(path, default_mpp=0.25)
    new = open_slide(path, slide_mpp=0.25)
    assert old.mpp == new.mpp == (0.25, 0.25) and old.mpp_source == new.mpp_source == "filled in"


def test_the_new_names_do_not_warn(cmu_small: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_slide(cmu_small, slide_mpp=0.25).mpp != (0.25, 0.25)  # the file's own pixel size wins


def test_both_spellings_are_refused(cmu_small: Path) -> None:
    with pytest.raises(InvalidParameterError, match="mpp is the old name of force_slide_mpp"):
        open_slide(cmu_small, mpp=0.3, force_slide_mpp=0.3)


# -- TissueMask.from_geojson: mpp_slide -> slide_mpp --------------------------------------------------

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [512, 0], [512, 512], [0, 512], [0, 0]]]}


def test_from_geojson_mpp_slide_is_now_slide_mpp() -> None:
    kwargs = {"slide_dimensions": (1024, 1024), "mask_mpp": 8.0}
    with pytest.warns(DeprecationWarning, match=r"TissueMask.from_geojson\(mpp_slide=.*\(slide_mpp=\.\.\.\)"):
        old = TissueMask.from_geojson(SQUARE, mpp_slide=0.5, **kwargs)
    new = TissueMask.from_geojson(SQUARE, slide_mpp=0.5, **kwargs)
    assert old.mask.shape == new.mask.shape == (64, 64)
    assert (old.mask == new.mask).all() and new.mask.sum() == 32 * 32


# -- slidetext_model -> slide_text_model ----------------------------------------------------------------


def test_analysis_request_slidetext_model_is_now_slide_text_model(tmp_path: Path) -> None:
    from slidescope.viewer._analysis import AnalysisRequest

    with pytest.warns(DeprecationWarning, match=r"AnalysisRequest\(slidetext_model=\.\.\.\)"):
        old = AnalysisRequest(slide=tmp_path / "s.svs", prompts="a: b", slidetext_model=tmp_path)
    assert old == AnalysisRequest(slide=tmp_path / "s.svs", prompts="a: b", slide_text_model=tmp_path)
    with pytest.warns(DeprecationWarning, match=r"AnalysisRequest.slidetext_model .*slide_text_model"):
        assert old.slidetext_model == tmp_path
    assert "slidetext_model" not in {f.name for f in dataclasses.fields(AnalysisRequest)}


def test_demo_result_slidetext_model_is_now_slide_text_model(tmp_path: Path) -> None:
    from slidescope.demo import DemoResult

    values = {
        f.name: None
        for f in dataclasses.fields(DemoResult)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name != "slide_text_model"
    }
    with pytest.warns(DeprecationWarning, match=r"DemoResult\(slidetext_model=\.\.\.\)"):
        result = DemoResult(**values, slidetext_model=tmp_path)
    assert result.slide_text_model == tmp_path
    with pytest.warns(DeprecationWarning, match=r"DemoResult.slidetext_model .*slide_text_model"):
        assert result.slidetext_model == tmp_path


def test_analyse_widget_slidetext_model_is_now_slide_text_model() -> None:
    pytest.importorskip("magicgui", reason="the napari plugin's widgets need magicgui (slidescope[viewer])")
    from slidescope.viewer._analyse_widget import AnalyseWidget

    alias = vars(AnalyseWidget)["slidetext_model"]  # a property: building the widget needs a Qt viewer
    widget = SimpleNamespace(slide_text_model="the FileEdit")
    with pytest.warns(DeprecationWarning, match=r"slidetext_model .*slide_text_model"):
        assert alias.fget(widget) == "the FileEdit"
