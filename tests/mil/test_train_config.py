"""``train()`` and :class:`TrainConfig` take the same arguments (names, defaults, order), so the keyword
signature of ``train`` and the configuration object cannot drift apart; bad options fail before any data
is read."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from slidescope.errors import InvalidParameterError
from slidescope.mil.train import TrainConfig, train, train_from_config


def test_train_config_mirrors_train_signature() -> None:
    params = inspect.signature(train).parameters
    fields = dataclasses.fields(TrainConfig)
    assert [f.name for f in fields] == list(params)
    for f in fields:
        default = params[f.name].default
        if default is inspect.Parameter.empty:
            assert f.default is dataclasses.MISSING, f.name
        else:
            assert f.default == default, f.name


def test_train_config_out_is_a_path_and_options_are_checked(tmp_path: Path) -> None:
    cfg = TrainConfig(
        "missing.csv",
        store=tmp_path,
        encoder="uni",
        out=str(tmp_path / "run"),
        task="survival",
        survival_model="weibull",
    )
    assert cfg.out == tmp_path / "run" and not cfg.cox
    # the option is refused before the (missing) manifest is read, as train() does
    with pytest.raises(InvalidParameterError, match="unknown survival model 'weibull'"):
        train_from_config(cfg)
    with pytest.raises(InvalidParameterError, match="n_bins must be >= 2"):
        train(
            "missing.csv",
            store=tmp_path,
            encoder="uni",
            out=tmp_path / "run",
            task="survival",
            survival_model="discrete",
            n_bins=1,
        )
    assert dataclasses.replace(cfg, survival_model="cox").cox
