"""A third-party plugin distribution reaches slidescope through its entry points (issue 13).

The test builds a real wheel of a tiny lab package (``labplug``: a weight-free 6-d colour encoder, a
max-pooling aggregator, and one deliberately broken entry point), installs it into a folder with
``uv pip install --target`` (or, without uv, by unpacking it, which is what installing a pure-Python wheel
is), and puts that folder on ``PYTHONPATH`` of fresh processes: the CLI lists and uses the encoder, a Dask
worker process finds it by itself, the aggregator trains through the registry, and the broken plugin is
reported without stopping anything.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

PLUGIN = '''
"""A lab's slidescope plugin: one encoder, one aggregator."""
import torch

from slidescope.features import Encoder, EncoderConfig, register_encoder
from slidescope.mil import AggregatorOutput, register_aggregator
from slidescope.mil.aggregators import Aggregator


class MeanColour(Encoder):
    """Per-channel mean and standard deviation of the tile in [0, 1]: 6 numbers."""

    def embed(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


register_encoder(
    EncoderConfig(
        name="lab-meancolour",
        architecture="labplug:MeanColour",
        embed_dim=6,
        input_size=64,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        tile_size=64,
        mpp=2.0,
        pooling="none",
        license="MIT (labplug)",
        weight_free=True,
    ),
    MeanColour,
)


def register_aggregators():
    @register_aggregator("lab-maxpool")
    class LabMaxPool(Aggregator):
        def __init__(self, in_dim, num_classes):
            super().__init__(in_dim, num_classes)
            self.head = torch.nn.Linear(in_dim, num_classes)

        def _forward(self, features, mask, labels):
            h = features.masked_fill(~mask.unsqueeze(-1), -1e4).amax(1)
            return AggregatorOutput(logits=self.head(h), scores=mask.float() / mask.sum(1, keepdim=True))
'''

ENTRY_POINTS = """\
[slidescope.encoders]
lab = labplug

[slidescope.aggregators]
lab = labplug:register_aggregators

[slidescope.slide_models]
broken = labplug.no_such_module
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _build_wheel(folder: Path) -> Path:
    """labplug-0.1-py3-none-any.whl, written by the wheel spec (PEP 427): files, dist-info, RECORD."""
    info = "labplug-0.1.dist-info"
    files = {
        "labplug/__init__.py": textwrap.dedent(PLUGIN).encode(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: labplug\nVersion: 0.1\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: slidescope-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": ENTRY_POINTS.encode(),
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    wheel = folder / "labplug-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    wheel = _build_wheel(root)
    target = root / "site"
    uv = shutil.which("uv")
    if uv is not None:
        subprocess.run(
            [uv, "pip", "install", "--offline", "--no-deps", "--target", str(target), str(wheel)],
            check=True,
            capture_output=True,
        )
    else:  # installing a pure wheel is unpacking it (PEP 427, "Spread")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
    assert (target / "labplug" / "__init__.py").is_file()
    assert (target / "labplug-0.1.dist-info" / "entry_points.txt").is_file()
    return target


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_cli_lists_the_plugin_encoder_and_reports_the_broken_plugin(site: Path, tmp_path: Path) -> None:
    res = _run(site, "-m", "slidescope", "encoders", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("lab-meancolour"))
    assert "6-d" in line and "MIT (labplug)" in line
    assert "he-descriptor" in res.stdout  # the built-ins are still there
    # the broken entry point (another group) is reported where it is used, never a crash
    code = (
        "import slidescope.vlm.published as p, slidescope._plugins as g; "
        "names = p.list_published_models(); print(names); print(g.plugin_failures())"
    )
    res = _run(site, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "'prism'" in res.stdout and "slidescope.slide_models:broken" in res.stdout
    assert "ModuleNotFoundError" in res.stdout


def _slide(tmp_path: Path) -> Path:
    from slidescope.synthetic import make_synthetic_slide

    path = tmp_path / "slides" / "s1.svs"
    make_synthetic_slide(path, width=2048, height=1536, mpp=0.5, seed=3, n_levels=2)
    return path


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_extract_runs_the_plugin_encoder_in_this_process_and_on_dask_workers(
    site: Path, tmp_path: Path, executor: str
) -> None:
    if executor == "dask":
        pytest.importorskip("distributed")
    slide = _slide(tmp_path)
    args = ["-m", "slidescope", "extract", str(slide), "--encoder", "lab-meancolour", "--stores", "stores"]
    args += ["--num-workers", "0", "--dtype", "float32", "--executor", executor]
    if executor == "dask":
        args += ["--dask-workers", "1"]
    res = _run(site, *args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr

    import slidescope as ss
    from slidescope.features.store import open_store
    from slidescope.wsi import read_tile

    store = open_store(tmp_path / "stores" / "s1.zarr")
    emb = store.embeddings("lab-meancolour")
    # the stored numbers are what the plugin's encoder computes on the tiles slidescope reads (an oracle
    # written here with numpy, not the plugin's torch code), on the grid of the plugin's tile size and mpp
    with ss.open_slide(slide) as s:
        grid = ss.make_tile_grid(s, tile_size=64, mpp=2.0)
        np.testing.assert_array_equal(store.coords, grid.coords)
        assert emb.shape == (len(grid), 6) and len(grid) > 0
        for i in (0, len(grid) // 2, len(grid) - 1):
            tile = read_tile(s, grid, i).astype(np.float64) / 255.0
            expect = np.concatenate([tile.mean(axis=(0, 1)), tile.std(axis=(0, 1), ddof=1)])
            np.testing.assert_allclose(emb[i], expect, atol=1e-4)


def test_plugin_aggregator_is_created_through_the_registry(site: Path, tmp_path: Path) -> None:
    code = (
        "import torch; from slidescope.mil import create_aggregator, list_aggregators\n"
        "assert 'lab-maxpool' in list_aggregators() and 'abmil' in list_aggregators()\n"
        "m = create_aggregator('lab-maxpool', in_dim=6, num_classes=2)\n"
        "x = torch.randn(2, 5, 6); mask = torch.ones(2, 5, dtype=torch.bool); mask[1, 3:] = False\n"
        "out = m(x, mask)\n"
        "assert out.logits.shape == (2, 2)\n"
        "print(type(m).__module__, type(m).__name__)\n"
    )
    res = _run(site, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["labplug", "LabMaxPool"]


def test_train_cli_trains_the_plugin_aggregator_on_plugin_embeddings(site: Path, tmp_path: Path) -> None:
    """`slidescope extract` with the plugin's encoder, then `slidescope train --model lab-maxpool`, in fresh
    processes that import nothing of the plugin themselves."""
    from slidescope.synthetic import make_synthetic_slide

    slides = []
    for i in range(6):
        path = tmp_path / "slides" / f"s{i}.svs"
        make_synthetic_slide(path, width=1024, height=768, mpp=0.5, seed=i, n_levels=1)
        slides.append(path)
    args = ["-m", "slidescope", "extract", *map(str, slides), "--encoder", "lab-meancolour"]
    res = _run(site, *args, "--stores", "stores", "--num-workers", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = ["slide,patient,label"] + [f"s{i},p{i},{'ab'[i % 2]}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["-m", "slidescope", "train", "--manifest", "labels.csv", "--stores", "stores"]
    args += ["--encoder", "lab-meancolour", "--model", "lab-maxpool", "--folds", "2", "--epochs", "1"]
    res = _run(site, *args, "--accelerator", "cpu", "--out", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt")) or sorted((tmp_path / "run").rglob("*.pt"))
    assert ckpts, sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    # the checkpoint names the plugin's aggregator and holds its head (in_dim 6 -> 2 classes)
    import torch

    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert "lab-maxpool" in repr(ckpt.get("hyper_parameters", ckpt))[:100_000]
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    assert any(tuple(v.shape) == (2, 6) for v in state.values() if hasattr(v, "shape"))
