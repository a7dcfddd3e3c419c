"""Layering of the package, read from the source with ``ast`` (nothing is imported).

1. No module imports a private name of another top-level part of slidescope: ``slidescope.X`` must not
   import ``slidescope.Y._module`` or ``_name`` from ``slidescope.Y...`` (Y != X). A private module or name
   is free to use inside its own subpackage. Each root module (``slidescope/demo.py``, ``metrics.py``...)
   is a part of its own. The shared root helpers in :data:`SHARED` are private to users but meant for every
   part. Offenders that remain are listed in :data:`ALLOWED` with the reason: that list may only shrink
   (an entry that no longer occurs fails the test, so it is removed when fixed).
2. No function or method anywhere in the package longer than :data:`MAX_FUNCTION_LINES` lines (from its
   ``def`` to its last line, its docstring not counted), and no module longer than :data:`MAX_FILE_LINES`
   lines (issue 16). The ones still over are listed in :data:`LONG_FUNCTIONS` / :data:`LONG_FILES` with the
   reason: those lists may only shrink too (an entry that is short now fails the test). The modules of
   :data:`SPLIT_MODULES` (split for issue 16) may have no entry in :data:`LONG_FUNCTIONS`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slidescope"

#: Root modules private by name but shared by every part of the package: importing them is no layering
#: violation. ``_lazy``: PEP 562 lazy exports of the package ``__init__`` files. ``_location``: where a
#: store or slide lives (a local path or a URL), used by the CLI, pipeline, features and vlm.
#: ``_compat``: renamed keywords and attributes that keep working for one release. ``_plugins``: the entry
#: points every registry loads.
SHARED = {"slidescope._lazy", "slidescope._location", "slidescope._compat", "slidescope._plugins"}

#: Known cross-package private imports, ``(importing module, imported module, name or None)``, each with
#: why it remains. Fix one, then delete its entry (the test fails on entries that no longer occur), so this
#: list can only shrink. mil, vlm and slidescope.training have none.
ALLOWED: dict[tuple[str, str, str | None], str] = {}

MAX_FUNCTION_LINES = 120
MAX_FILE_LINES = 700
#: Functions still over :data:`MAX_FUNCTION_LINES`, ``"path/under/slidescope.py:Qualified.name"`` -> why. Split
#: one, then delete its entry (the test fails on entries that are short now or gone): this list only shrinks.
LONG_FUNCTIONS: dict[str, str] = {}
#: Modules still over :data:`MAX_FILE_LINES` lines, ``"path/under/slidescope.py"`` -> why; only shrinks too.
LONG_FILES: dict[str, str] = {}
#: Modules split for issue 16: none of their functions may be on LONG_FUNCTIONS (the whole package is checked).
SPLIT_MODULES = (
    "mil/train.py",
    "mil/_folds.py",
    "mil/_evaluation.py",
    "training.py",
    "metrics.py",
    "features/extract.py",
    "pipeline/_run.py",
    "pipeline/_config.py",
    "pipeline/_embed.py",
    "options.py",
    "cli/_run.py",
    "cli/_features.py",
    "cli/_wsi.py",
    "cli/_schema.py",
    "features/store/__init__.py",
    "features/store/_claim.py",
    "features/store/_errors.py",
    "features/store/_fastread.py",
    "features/store/_keys.py",
    "features/store/_layout.py",
    "features/store/_store.py",
    "features/store/_writer.py",
    "demo.py",
    "mil/heatmap.py",
    "wsi/_grid.py",
    "wsi/_tissue.py",
    "wsi/_pen.py",
    "wsi/_polygons.py",
    "vlm/api.py",
    "vlm/_prompts.py",
    "vlm/_embeddings.py",
    "vlm/fewshot.py",
    "vlm/_fewshot_core.py",
    "vlm/pretrain.py",
    "vlm/_pretrain_data.py",
    "vlm/_pretrain_steps.py",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The top-level part of a module: ``slidescope.mil.train`` -> ``slidescope.mil``."""
    return ".".join(module.split(".")[:2])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from ... import`` in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every import in the file, function bodies included."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            found += [(source, a.name) for a in node.names]
    return found


def _violation(importer: str, source: str, name: str | None) -> bool:
    """Whether ``importer`` importing ``name`` from ``source`` crosses into another part's private API."""
    if not source.startswith("slidescope.") and source != "slidescope":
        return False
    target = f"{source}.{name}" if name is not None and source == "slidescope" else source
    if _part(target) == _part(importer) or any(target == s or target.startswith(s + ".") for s in SHARED):
        return False
    inner = target.split(".")[1:]  # below "slidescope"
    return any(_private(p) for p in inner) or (name is not None and _private(name))


def cross_package_private_imports() -> set[tuple[str, str, str | None]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for source, name in _imports(path):
            if _violation(importer, source, name):
                found.add((importer, source, name))
    return found


def test_no_cross_package_private_imports() -> None:
    found = cross_package_private_imports()
    new = sorted(found - set(ALLOWED))
    listing = "\n".join(f"  {i} imports {n or '(module)'} from {s}" for i, s, n in new)
    assert not new, f"private names imported across parts (use or add a public name instead):\n{listing}"
    gone = sorted(set(ALLOWED) - found)
    assert not gone, f"fixed: delete these entries from ALLOWED: {gone}"


@pytest.mark.parametrize(
    ("importer", "source", "name", "expected"),
    [
        ("slidescope.vlm.pretrain", "slidescope.mil.train", "_world", True),  # private name of another part
        (
            "slidescope.vlm.pretrain",
            "slidescope.mil._evaluation",
            "EVALS",
            True,
        ),  # another part's private module
        (
            "slidescope.pipeline._run",
            "slidescope.features",
            "_store",
            True,
        ),  # ``from ..features import _store``
        (
            "slidescope.demo",
            "slidescope.wsi._slide",
            "open_slide",
            True,
        ),  # a root module is a part of its own
        ("slidescope.mil.train", "slidescope.mil._evaluation", "EVALS", False),  # own subpackage
        ("slidescope.mil.train", "slidescope.training", "write_atomic", False),  # public
        ("slidescope.mil.train", "slidescope", "__version__", False),  # dunder
        ("slidescope.cli._mil", "slidescope._lazy", "lazy_exports", False),  # shared root helper
        ("slidescope.cli._mil", "slidescope", "_lazy", False),
        ("slidescope.cli._mil", "slidescope", "_private_root", True),
        ("slidescope.vlm.api", "numpy", "_private", False),  # not slidescope
    ],
)
def test_violation_rule(importer: str, source: str, name: str, expected: bool) -> None:
    assert _violation(importer, source, name) is expected


def test_relative_imports_resolve(tmp_path: Path) -> None:
    """``from ..mil.train import _x`` in slidescope/vlm/pretrain.py and ``from . import _y`` in a package
    ``__init__`` resolve to the absolute modules the interpreter would import."""
    tree = ast.parse("from ..mil.train import _x\nfrom . import _y\nfrom .data import z\n")
    a, b, c = tree.body
    assert _resolve("slidescope.vlm.pretrain", False, a) == "slidescope.mil.train"
    assert _resolve("slidescope.vlm", True, b) == "slidescope.vlm"
    assert _resolve("slidescope.mil.train", False, c) == "slidescope.mil.data"


def test_walk_finds_planted_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk over a small package tree finds private imports at module level and inside functions, and
    only those that cross parts."""
    pkg = tmp_path / "slidescope"
    files = {
        "__init__.py": "from ._lazy import lazy_exports\n",
        "_lazy.py": "",
        "mil/__init__.py": "",
        "mil/_helpers.py": "def util(): pass\n",
        "mil/train.py": "from ._helpers import util\ndef _world(): pass\n",
        "vlm/__init__.py": "",
        "vlm/pretrain.py": "import slidescope.mil._helpers\ndef f():\n    from ..mil.train import _world, train\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert cross_package_private_imports() == {
        ("slidescope.vlm.pretrain", "slidescope.mil._helpers", None),
        ("slidescope.vlm.pretrain", "slidescope.mil.train", "_world"),
    }


def _function_lengths(path: Path) -> list[tuple[int, str]]:
    """``(lines without the docstring, "path:Qualified.name")`` of every function and method in ``path``."""
    out: list[tuple[int, str]] = []
    where = path.relative_to(PACKAGE).as_posix()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                lines = child.end_lineno - child.lineno + 1
                first = child.body[0]
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    assert first.end_lineno is not None
                    lines -= first.end_lineno - first.lineno + 1
                out.append((lines, f"{where}:{name}"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return out


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_functions_are_short() -> None:
    lengths = {where: n for path in _modules() for n, where in _function_lengths(path)}
    long = {where for where, n in lengths.items() if n > MAX_FUNCTION_LINES}
    new = sorted(f"{where} ({lengths[where]} lines)" for where in long - set(LONG_FUNCTIONS))
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines of code (split them into named steps): {new}"
    gone = sorted(set(LONG_FUNCTIONS) - long)
    assert not gone, f"short now (or gone): delete these entries from LONG_FUNCTIONS: {gone}"


def test_files_are_short() -> None:
    lengths = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in _modules()}
    long = {where for where, n in lengths.items() if n > MAX_FILE_LINES}
    new = sorted(f"{where} ({lengths[where]} lines)" for where in long - set(LONG_FILES))
    assert not new, f"modules over {MAX_FILE_LINES} lines (split them by concern): {new}"
    gone = sorted(set(LONG_FILES) - long)
    assert not gone, f"short now (or gone): delete these entries from LONG_FILES: {gone}"


def test_split_modules_have_no_long_functions() -> None:
    assert all((PACKAGE / m).is_file() for m in SPLIT_MODULES), "SPLIT_MODULES names a module that is gone"
    listed = sorted(k for k in LONG_FUNCTIONS if k.split(":")[0] in SPLIT_MODULES)
    assert not listed, f"these modules were split for issue 16: their functions stay short: {listed}"


def test_function_lengths_count_methods_and_nested_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Methods and nested functions are measured under their qualified names; a docstring is not counted."""
    pkg = tmp_path / "slidescope"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(3))
    (pkg / "m.py").write_text(
        f'class A:\n    def f(self):\n        """Doc\n        string."""\n{body.replace("    ", "        ")}'
        f"def g():\n    def h():\n        pass\n{body}"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert sorted(_function_lengths(pkg / "m.py")) == [(2, "m.py:g.h"), (4, "m.py:A.f"), (6, "m.py:g")]
