"""Fixtures of the napari plugin tests: a private cache folder, the sample store, small checkpoints.

The sample store (``he-descriptor`` embeddings of ``sample_data/sample_slide.tiff`` and its
ground-truth tumour fraction) is made once per session in a temporary cache folder, so the Analyse
widget finds cached embeddings as a user does after opening the sample. The MIL checkpoints are
untrained ABMIL models saved in the checkpoint layout ``load_task`` reads (a trained model is not
needed to check what the viewer does with its scores); the slide-text model is a tiny one built
the way tests/vlm build theirs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ARTEFACTS = Path("/tmp/slidescope-artefacts")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Qt tests need an X server: pytest-xvfb starts Xvfb when it is installed (``.ci/run`` installs it).
    Without Xvfb and without a display they are skipped with that reason instead of crashing Qt."""
    import os

    if shutil.which("Xvfb") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    skip = pytest.mark.skip(reason="no X server: install Xvfb (`bash .ci/run` does) or run with a display")
    for item in items:
        if {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(skip)


@dataclass(frozen=True)
class Sample:
    slide: Path
    stores: Path
    store: Path
    tissue: Any


@pytest.fixture(scope="session", autouse=True)
def viewer_cache(tmp_path_factory: pytest.TempPathFactory):
    """SLIDESCOPE_CACHE for the whole session: nothing is written to the user's cache."""
    root = tmp_path_factory.mktemp("slidescope-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIDESCOPE_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def sample(viewer_cache: Path) -> Sample:
    from slidescope.viewer._sample import prepare_sample

    slide, store, tissue = prepare_sample()
    slide.close()
    return Sample(slide=Path(slide.path), stores=store.path.parent, store=store.path, tissue=tissue)


def _save_abmil(path: Path, *, encoder: str, in_dim: int, seed: int = 0) -> Path:
    import torch

    from slidescope.mil.task import MILTask

    torch.manual_seed(seed)
    task = MILTask(
        "abmil",
        {"embed_dim": 32, "attn_dim": 16, "dropout": 0.0},
        in_dim=in_dim,
        num_classes=2,
        class_names=["normal", "tumour"],
        encoder=encoder,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def save_abmil():
    """``save_abmil(path, *, encoder, in_dim, seed=0)``: an untrained ABMIL checkpoint at ``path``."""
    return _save_abmil


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ABMIL checkpoint on he-descriptor embeddings (98-d), as ``runs/abmil/fold0/best.ckpt``."""
    return _save_abmil(
        tmp_path_factory.mktemp("runs") / "abmil" / "fold0" / "best.ckpt", encoder="he-descriptor", in_dim=98
    )


@pytest.fixture(scope="session")
def uni_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained on another encoder (UNI, 1024-d)."""
    return _save_abmil(tmp_path_factory.mktemp("runs-uni") / "best.ckpt", encoder="uni", in_dim=1024)


@pytest.fixture(scope="session")
def slide_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny slide-text model on 98-d (he-descriptor) tile embeddings, saved as `slidescope pretrain` does."""
    import torch

    from slidescope.vlm.model import SlideTextModel
    from slidescope.vlm.slide_encoder import PerceiverSlideEncoderConfig
    from slidescope.vlm.text import SmallTextTower

    torch.manual_seed(0)
    tower = SmallTextTower.from_texts(
        ["invasive carcinoma sheets of atypical cells", "benign stroma collagen"],
        width=32,
        depth=1,
        heads=2,
        max_length=16,
    )
    model = SlideTextModel(PerceiverSlideEncoderConfig.tiny(context_dim=98), tower, dim_latents=16)
    return model.save(tmp_path_factory.mktemp("slidetext") / "model")


@pytest.fixture
def notifications():
    """Every napari notification shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event: Any) -> None:
        note = getattr(event, "value", event)
        seen.append((str(note.severity), str(note.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A private copy of the sample slide (so its store starts empty)."""
    from slidescope.viewer._paths import sample_slide_path

    folder = tmp_path / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(sample_slide_path(), folder / "sample_slide.tiff"))


@pytest.fixture
def save_artefact():
    """Copy a test output to /tmp/slidescope-artefacts (to look at after the run)."""

    def save(path: Path) -> Path:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(path, ARTEFACTS / path.name))

    return save


@pytest.fixture
def hot_pixels():
    """``hot(rgb) -> bool mask``: pixels in the hot (yellow-orange) end of the heatmap colours."""

    def hot(rgb: np.ndarray) -> np.ndarray:
        r, g, b = (rgb[..., i].astype(int) for i in range(3))
        return (r > 180) & (g > 150) & (b < g - 30)

    return hot


@pytest.fixture
def run_layer():
    """``run_layer(viewer, score)``: the newest layer of an analysis run named ``<slide>: run N · ... · <score>``."""

    def find(viewer: Any, score: str) -> Any:
        found = [layer for layer in viewer.layers if layer.name.endswith(f" · {score}")]
        assert found, [layer.name for layer in viewer.layers]
        return found[-1]

    return find
