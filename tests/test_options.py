"""The option schema (slidescope.options): every copy of an option is derived from it."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from typing import Any

import pytest
import typer

from slidescope.options import (
    DEFAULT_OFFLINE_ENCODER,
    EmbeddingOptions,
    SlideOptions,
    TilingOptions,
    option_info,
    options_of,
    parse_batch_size,
)


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _command(name: str):
    from slidescope.cli import app
    from slidescope.cli._schema import fill_choices

    group: Any = typer.main.get_command(app)  # a click group
    return fill_choices(group.commands[name])  # registry choices filled in, as `<name> --help` does


def test_run_config_and_extract_job_extend_the_schema() -> None:
    from slidescope.features.extract import ExtractJob
    from slidescope.pipeline import CONFIG_KEYS, EXECUTION_KEYS, RunConfig

    slide = _defaults(SlideOptions)
    assert set(slide) == set(_defaults(TilingOptions)) | set(_defaults(EmbeddingOptions))
    assert {k: v for k, v in _defaults(RunConfig).items() if k in slide} == slide
    assert _defaults(ExtractJob) == {**slide, "out": dataclasses.MISSING, "slide_mpps": ()}
    # the config file's keys: the slides, every option of the run, the execution keys
    run_options = [f.name.replace("_", "-") for f in options_of(RunConfig)]
    assert CONFIG_KEYS == ("slides", *run_options, *(k.replace("_", "-") for k in EXECUTION_KEYS))
    assert "progress" not in run_options  # an argument of run(), not an option


def test_run_command_offers_every_option_with_the_schema_help() -> None:
    from slidescope.pipeline import RunConfig

    params = {p.name: p for p in _command("run").params}
    for f in options_of(RunConfig):
        p = params[f.name]
        info = option_info(RunConfig, f.name)
        assert p.default is None, f.name  # unset flags leave the config file's value, else the default
        assert p.help.startswith(info.text()), (f.name, p.help)  # {choices} filled in from the registry
        assert p.opts == [(info.flag or f"--{f.name.replace('_', '-')}").split("/")[0]], f.name
    assert "(default: 0.25)" in params["min_tissue"].help and "(default: OUT/stores)" in params["stores"].help
    assert params["heatmaps"].secondary_opts == ["--no-heatmaps"]


def test_extract_and_tile_defaults_are_the_schema_defaults() -> None:
    extract = {p.name: p for p in _command("extract").params}
    for f in options_of(SlideOptions):
        expected = DEFAULT_OFFLINE_ENCODER if f.name == "encoder" else f.default
        assert extract[f.name].default == expected, f.name
    tile = {p.name: p for p in _command("tile").params}
    assert (tile["mpp"].default, tile["tile_size"].default) == (0.5, 224)  # no encoder to take them from
    for name in ("overlap", "min_tissue", "pen", "backend", "slide_mpp", "force_slide_mpp"):
        assert tile[name].default == _defaults(TilingOptions)[name], name


def test_function_and_viewer_defaults_are_the_schema_defaults() -> None:
    from slidescope.features.extract import extract_features, extract_slides
    from slidescope.viewer._analysis import AnalysisRequest

    schema = _defaults(SlideOptions)
    for fn in (extract_slides, extract_features):
        for name, p in inspect.signature(fn).parameters.items():
            if name in schema and name != "encoder":
                assert p.default == schema[name], (fn.__name__, name)
    request = _defaults(AnalysisRequest)
    assert (request["pen"], request["batch_size"]) == (schema["pen"], schema["batch_size"])
    assert request["encoder"] == DEFAULT_OFFLINE_ENCODER


def test_choices_come_from_their_owner_and_are_checked() -> None:
    from slidescope.errors import InvalidParameterError
    from slidescope.pipeline import resolve_config
    from slidescope.wsi import PEN_MODES

    pen = option_info(TilingOptions, "pen").allowed()
    assert pen is not None and set(pen) == set(PEN_MODES) and pen[0] == "auto"
    with pytest.raises(InvalidParameterError, match="stain must be one of macenko, reinhard"):
        resolve_config("x.svs", encoder="he-descriptor", out="o", stain="vahadane", validate=False)


def test_batch_size_parsing() -> None:
    assert [parse_batch_size(v) for v in ("auto", "64", 8, None)] == ["auto", 64, 8, None]
    with pytest.raises(ValueError):
        parse_batch_size("many")


def test_importing_the_schema_is_light() -> None:
    code = (
        "import sys, slidescope.options; "
        "print([m for m in ('torch', 'numpy', 'openslide', 'tiffslide') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"]


def test_literal_choice_lists_equal_their_owners() -> None:
    """The schema spells backend, stain and precision choices out (so `import slidescope.options` and the CLI's
    help stay light); each must equal what its owner accepts."""
    import typing

    from slidescope import options
    from slidescope.features import stain
    from slidescope.features.encoders._base import Precision
    from slidescope.wsi import registered_backends

    assert set(options._BACKENDS()) == {"auto", *registered_backends()}  # asked from the registry
    assert set(options._STAINS) == set(stain._METHODS)
    assert options._PRECISIONS == typing.get_args(Precision)
    # the store's dtypes: every listed one is a numpy float type the writer accepts
    import numpy as np

    assert all(np.dtype(d).kind == "f" for d in options._DTYPES)
