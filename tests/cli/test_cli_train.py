"""`slidescope train --help` shows the training recipe and its defaults; the recipe flags reach train()."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from slidescope.cli import app
from slidescope.errors import InvalidParameterError


def _help_rows() -> tuple[str, dict[str, str]]:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output.replace("│", " "))
    rows = {}
    for line in result.output.splitlines():  # one option per row at this width
        found = re.search(r"(--[a-z-]+)", line)
        if found:
            rows[found.group(1)] = line
    return text, rows


@pytest.mark.parametrize(
    ("option", "default"),
    [
        ("--epochs", "20"),
        ("--lr", "0.0002"),
        ("--weight-decay", "0.01"),
        ("--early-stopping-patience", "5"),
        ("--max-instances", "512"),
        ("--class-weighting", "class-weighting"),
        ("--folds", "5"),
    ],
)
def test_train_help_shows_each_default(option: str, default: str) -> None:
    _, rows = _help_rows()
    assert f"[default: {default}]" in rows[option]


def test_train_help_names_the_recipe_and_how_clam_differs() -> None:
    text, _ = _help_rows()
    assert "slidescope's own, not a published one" in text
    assert "AdamW" in text and "cosine schedule" in text and "class-weighted cross-entropy" in text
    # CLAM's recipe and the flags that come closest to it
    assert (
        "CLAM's recipe" in text and "Adam with a constant lr 2e-4" in text and "never before epoch 50" in text
    )
    assert (
        "--lr 2e-4 --weight-decay 1e-5 --epochs 200 --early-stopping-patience 20 --batch-size 1 "
        "--max-instances 0"
    ) in text


def test_recipe_flags_reach_train(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import slidescope.mil.train as mil_train

    seen = {}

    def fake_train(manifest, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(mil_train, "train", fake_train)
    args = ["train", "--manifest", str(tmp_path / "m.csv"), "--store", str(tmp_path), "--encoder", "uni"]
    result = CliRunner().invoke(app, [*args, "--max-instances", "0", "--no-class-weighting"])
    assert result.exit_code == 0, result.output
    assert seen["max_instances"] is None and seen["class_weighting"] is False
    result = CliRunner().invoke(app, args)
    assert seen["max_instances"] == 512 and seen["class_weighting"] is True
    result = CliRunner().invoke(app, [*args, "--max-instances", "-1"])
    assert isinstance(result.exception, InvalidParameterError) and "0 = every tile" in str(result.exception)
