"""The CLI starts light (issue 19): ``import slidescope.cli`` and ``--help`` import no model, array-processing
or slide-reading stack; those load inside the commands that use them. ``run --dry-run`` checks the encoder
name and reads its tile size and mpp from the encoder catalogue without torch. No timing is asserted (the
machine's load varies); ``python -X importtime -m slidescope info --help`` shows where start-up time goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from realdata import real_file

#: Modules a command that does not need them must not pay for at start-up. numpy is not on the list: the
#: ``--backend`` help names the registered readers, and the reader registry (wsi/_backends.py) imports it;
#: it is checked separately (only a help that lists the readers may load it).
HEAVY = (
    "torch",
    "timm",
    "lightning",
    "transformers",
    "open_clip",
    "scipy",
    "skimage",
    "PIL",
    "zarr",
    "h5py",
    "pandas",
    "dask",
    "openslide",
    "tiffslide",
    "tifffile",
    "napari",
)


def _imported(code: str) -> list[str]:
    probe = f"import sys; {code}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_cli_loads_no_heavy_stack() -> None:
    assert _imported("import slidescope.cli") == []


def test_help_of_light_commands_loads_no_heavy_stack() -> None:
    for args in ([], ["info"], ["tile"], ["extract"], ["run"]):
        code = (
            "from slidescope.cli import app; import contextlib, io;"
            f"f = io.StringIO(); r = contextlib.redirect_stdout(f); r.__enter__();"
            f"app({[*args, '--help']!r}, standalone_mode=False); r.__exit__(None, None, None)"
        )
        assert _imported(code) == [], args


#: run in a fresh interpreter: every command's --help, recording the heavy modules each one brought in
_EVERY_HELP = """
import contextlib, io, json, sys
import typer
from slidescope.cli import app
from slidescope.cli import _schema

heavy = HEAVY + ("numpy",)
group = typer.main.get_command(app)
# the commands whose help lists a registry (--backend) last: they may load numpy, the others may not
names = sorted(group.commands, key=lambda n: any(p.help in _schema._PENDING for p in group.commands[n].params))
seen, out = set(), {}
for args in ([], *([n] for n in names)):
    with contextlib.redirect_stdout(io.StringIO()) as f:
        app([*args, "--help"], standalone_mode=False)
    new = [m for m in heavy if m in sys.modules and m not in seen]
    seen.update(new)
    lists = bool(args) and any(p.help in _schema._PENDING for p in group.commands[args[0]].params)
    out[" ".join(args) or "slidescope"] = {"new": new, "lists_registry": lists, "chars": len(f.getvalue())}
print(json.dumps(out))
"""


def test_help_of_every_command_loads_no_model_stack_and_numpy_only_for_the_reader_list() -> None:
    code = f"HEAVY = {HEAVY!r}\n" + _EVERY_HELP
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(res.stdout)
    assert len(report) > 10 and "run" in report and "extract" in report
    for command, r in report.items():
        assert r["chars"] > 200, command  # the help was printed
        assert [m for m in r["new"] if m != "numpy"] == [], (command, r["new"])
        assert "numpy" not in r["new"] or r["lists_registry"], command
    assert report["tile"]["lists_registry"]  # --backend's readers are filled in when its help is shown


def test_backend_help_names_the_registered_readers() -> None:
    from slidescope.wsi import backend_names

    out = subprocess.run(
        [sys.executable, "-m", "slidescope", "tile", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "400", "PATH": "", "TERM": "dumb"},
    ).stdout
    assert "{choices}" not in out
    line = next(x for x in out.splitlines() if "--backend" in x)
    assert "Slide reader: auto, " + ", ".join(backend_names()[:-1]) in line


def _dry_run(tmp_path: Path, encoder: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide\n{real_file('slides/CMU-1-Small-Region.svs')}\n")
    argv = ["run", str(manifest), "--encoder", encoder, "--out", str(tmp_path / "out"), "--dry-run"]
    probe = (
        "import sys\nfrom slidescope.cli import main\n"
        f"sys.argv = ['slidescope', *{argv!r}]\n"
        "try:\n    main()\nfinally:\n"
        f"    print('IMPORTED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    imported = res.stderr.rsplit("IMPORTED=", 1)[1].strip().split(",")
    return res, [m for m in imported if m]


def test_dry_run_checks_the_encoder_without_torch(tmp_path: Path) -> None:
    res, imported = _dry_run(tmp_path, "uni")
    assert res.returncode == 0, res.stderr
    assert "dry run: nothing is written" in res.stdout and "slides (1: 1 do):" in res.stdout
    assert 'encoder: "uni"' in res.stdout
    assert imported == []  # no torch, timm, slide reader or zarr: the config comes from the catalogue
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_an_unknown_encoder_before_any_work_without_torch(tmp_path: Path) -> None:
    res, imported = _dry_run(tmp_path, "not-an-encoder")
    assert res.returncode == 2
    assert "unknown encoder 'not-an-encoder'. Registered: " in res.stderr and "uni, uni2-h" in res.stderr
    assert "timm:<name>" in res.stderr
    assert imported == []
    assert not (tmp_path / "out").exists()
