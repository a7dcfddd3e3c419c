"""Loading what a user (or an attacker) left on disk (issue 18 #13, #15): a fold's ``last.ckpt`` is loaded
with ``weights_only=True`` before training resumes from it (a planted pickle never runs), and damaged
checkpoints or safetensors files give a slidescope error naming the file and what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ENC = "he-descriptor"


@pytest.fixture(scope="module")
def finished_run(mil_cohort, tmp_path_factory) -> Path:
    from slidescope.mil.train import train

    out = tmp_path_factory.mktemp("resume_safety") / "run"
    train(
        mil_cohort.manifest,
        store=mil_cohort.store,
        encoder=ENC,
        out=out,
        model="abmil",
        model_kwargs={"embed_dim": 16, "attn_dim": 8},
        folds=2,
        epochs=2,
        batch_size=4,
        bootstrap=20,
        accelerator="cpu",
    )
    return out


def _resumable_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose fold 1 is unfinished (no done.json): training resumes it from last.ckpt."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "fold1" / "done.json").unlink()
    assert (out / "fold1" / "last.ckpt").is_file()
    return out


def _train_again(mil_cohort, out: Path):
    from slidescope.mil.train import train

    return train(
        mil_cohort.manifest,
        store=mil_cohort.store,
        encoder=ENC,
        out=out,
        model="abmil",
        model_kwargs={"embed_dim": 16, "attn_dim": 8},
        folds=2,
        epochs=2,
        batch_size=4,
        bootstrap=20,
        accelerator="cpu",
    )


class _Payload:
    """Unpickling this creates ``marker`` (as code in a planted checkpoint would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_last_ckpt_is_refused_without_running(mil_cohort, finished_run: Path, tmp_path: Path) -> None:
    from slidescope.mil.task import CheckpointError

    out = _resumable_copy(finished_run, tmp_path)
    last = out / "fold1" / "last.ckpt"
    marker = tmp_path / "payload-ran"
    good = torch.load(last, map_location="cpu", weights_only=True)
    torch.save({**good, "callbacks": {"x": _Payload(marker)}}, last)  # a real checkpoint plus a payload
    with pytest.raises(
        CheckpointError, match=r"fold 1: the resume checkpoint .*last\.ckpt cannot be loaded safely"
    ):
        _train_again(mil_cohort, out)
    assert not marker.exists()


def test_truncated_last_ckpt_says_to_delete_it(mil_cohort, finished_run: Path, tmp_path: Path) -> None:
    from slidescope.mil.task import CheckpointError

    out = _resumable_copy(finished_run, tmp_path)
    last = out / "fold1" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*Delete .*last\.ckpt to restart this fold"):
        _train_again(mil_cohort, out)
    # following the advice works: the fold restarts from scratch
    last.unlink()
    res = _train_again(mil_cohort, out)
    assert [f.status for f in res.folds] == ["skipped", "trained"]


def test_truncated_safetensors_weights_and_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from slidescope.errors import SlidescopeError
    from slidescope.features.encoders._weights import read_state_dict

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(weights))
    assert read_state_dict(weights)["w"].shape == (1000,)
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(
        SlidescopeError, match=r"model\.safetensors is not a readable safetensors file.*download it"
    ):
        read_state_dict(weights)


def test_truncated_slide_text_model(tmp_path: Path) -> None:
    from slidescope.errors import SlidescopeError
    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.pretrain import default_slide_encoder
    from slidescope.vlm.text import SmallTextTower

    tower = SmallTextTower.from_texts(
        ["a tumour", "normal stroma"], width=16, depth=1, heads=2, max_length=16
    )
    model = SlideTextModel(
        default_slide_encoder(8, latent_seq=4, latent_dim=16, perceiver_depth=1), tower, dim_latents=16
    )
    folder = model.save(tmp_path / "model")
    SlideTextModel.load(folder)
    f = Path(folder) / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SlidescopeError, match=r"model\.safetensors is not a readable safetensors file"):
        SlideTextModel.load(folder)
