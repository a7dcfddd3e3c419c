"""Every file, section and module the code and the docs cite exists.

Scanned: the docstrings, comments and string literals of ``slidescope/**/*.py``, ``README.md`` and
``docs/*.md``. A citation is

- a repository path (``docs/...``, ``tests/...``, ``slidescope/...``, ``benchmarks/...``, ``examples/...``,
  ``sample_data/...``); ``<name>``, ``{x}`` and ``*`` are wildcards that must match at least one file;
  a path that only an installed wheel has (pyproject's ``force-include``) counts;
- a section of a Markdown file: ``docs/X.md §4.2`` (the heading numbered 4.2; a series ``§1.4, §3.2``
  and a range ``§2-3`` are all checked) or ``docs/X.md#anchor`` / ``README.md#anchor`` (GitHub's heading
  slug); a ``§`` in the code that follows no ``docs/*.md`` path names no file and fails;
- a relative Markdown link ``[text](path#anchor)`` in README.md or docs/*.md;
- a dotted name in a docstring or comment, ``slidescope.x.y`` (a module, or an attribute of one: it must
  import and resolve; a deprecated alias counts).
"""

from __future__ import annotations

import ast
import glob
import importlib
import io
import re
import tokenize
import tomllib
import warnings
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("docs", "tests", "slidescope", "benchmarks", "examples", "sample_data")

_PATH = re.compile(r"(?<![\w/.:-])((?:" + "|".join(TOP) + r")/(?:[\w.*/-]|<\w+>|\{\w*\})*)")
_SECTIONS = re.compile(
    r"(?<![\w/.:-])((?:docs/)?[\w-]+\.md)`{0,2}\)?"
    r"(?P<refs>(?:[\s,;]*(?:and\s+)?§\s?[\d.]+(?:-[\d.]+)?)+)"
)
_ANCHOR = re.compile(r"(?<![\w/.:-])((?:docs/)?[\w-]+\.md)#([\w-]+)")
_SECTION_SIGN = re.compile(r"§\s?[\d.]+")
_MODULE = re.compile(r"(?<![\w/.:-])(slidescope(?:\.[A-Za-z_]\w*)+)(?![\w-])")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


# -- what is scanned ----------------------------------------------------------------------------------


def _python_texts(path: Path) -> tuple[list[str], list[str]]:
    """(docstrings and comments, other string literals) of one module."""
    source = path.read_text(encoding="utf-8")
    docs: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                docs.append(doc)
    strings: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            docs.append(tok.string)
        elif tok.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)):
            try:
                if ast.literal_eval(tok.string) in docs:
                    continue  # a docstring, already scanned
            except (ValueError, SyntaxError):
                pass
            strings.append(tok.string)
    return docs, strings


def _sources() -> list[tuple[str, str, bool]]:
    """(repository-relative name, text, names are citations) for everything scanned."""
    out = []
    for path in sorted((ROOT / "slidescope").rglob("*.py")):
        docs, strings = _python_texts(path)
        name = path.relative_to(ROOT).as_posix()
        out.append((name, "\n".join(docs), True))
        out.append((name, "\n".join(strings), False))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if path.is_file():
            out.append((path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"), True))
    return out


# -- what exists --------------------------------------------------------------------------------------


@cache
def _wheel_only_paths() -> tuple[str, ...]:
    """Paths that exist only inside a built wheel (``force-include`` targets)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    targets = project.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    return tuple(targets.get("wheel", {}).get("force-include", {}).values())


def _path_exists(cited: str) -> bool:
    cited = cited.rstrip(".,;:")
    pattern = re.sub(r"<\w+>|\{\w*\}", "*", cited)
    if "*" in pattern:
        return bool(glob.glob(str(ROOT / pattern)))
    if (ROOT / cited).exists():
        return True
    return any(
        target == cited.rstrip("/") or target.startswith(cited.rstrip("/") + "/")
        for target in _wheel_only_paths()
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def _headings(md: str) -> tuple[set[str], set[str]]:
    """(section numbers, anchors) of a Markdown file of the repository."""
    numbers, anchors = set(), set()
    in_code = False
    for line in (ROOT / md).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip()
        anchors.add(_slug(title))
        m = re.match(r"(\d+(?:\.\d+)*)\.?\s", title)
        if m:
            numbers.add(m.group(1))
    return numbers, anchors


def _md_file(cited: str, source: str) -> str:
    """A cited Markdown name as a repository path (``X.md`` alone is relative to the citing file)."""
    if cited.startswith("docs/") or cited == "README.md":
        return cited
    return (Path(source).parent / cited).as_posix()


def _resolve(dotted: str) -> str | None:
    """Why a dotted name is not a module or an attribute chain of the longest module prefix (None: it is).

    A deprecated alias still resolves (docstrings name old spellings to say they are deprecated), and so does
    an entry point group of the plugin registries (``slidescope.encoders``: a name, not a module)."""
    from slidescope._plugins import GROUPS

    if dotted.rstrip(".") in GROUPS.values():
        return None
    parts = dotted.rstrip(".").split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError as err:
                if err.name is not None and not ".".join(parts[:cut]).startswith(err.name):
                    raise  # a module that exists but needs something missing: not a citation problem
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                return "is no module or attribute of one"
            return None
    return "is no module or attribute of one"


# -- the checks ---------------------------------------------------------------------------------------


def find_broken(sources: list[tuple[str, str, bool]]) -> list[str]:
    """One line per citation that names something that does not exist."""
    broken = []
    for name, text, is_doc in sources:
        for m in _PATH.finditer(text):
            if not _path_exists(m.group(1)):
                broken.append(f"{name}: {m.group(1)} does not exist")
        cited_signs = set()
        for m in _SECTIONS.finditer(text):
            md = _md_file(m.group(1), name)
            cited_signs.update(range(m.start("refs"), m.end("refs")))
            if not (ROOT / md).is_file():
                if not m.group(1).startswith("docs/"):  # docs/... is reported by the path check
                    broken.append(f"{name}: {m.group(1)} (cited with §) is no file; cite it as docs/...")
                continue
            numbers, _ = _headings(md)
            for ref in re.findall(r"§\s?([\d.]+(?:-[\d.]+)?)", m.group("refs")):
                for number in ref.split("-"):
                    if number.rstrip(".") not in numbers:
                        broken.append(f"{name}: {md} has no section {number.rstrip('.')} (cited as §{ref})")
        if name.endswith(".py"):
            for m in _SECTION_SIGN.finditer(text):
                if m.start() not in cited_signs:
                    line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.start())].strip()
                    broken.append(f"{name}: '{m.group(0)}' follows no docs/*.md path: {line[:90]}")
        for m in _ANCHOR.finditer(text):
            md = _md_file(m.group(1), name)
            if (ROOT / md).is_file() and m.group(2) not in _headings(md)[1]:
                broken.append(f"{name}: {md} has no heading with anchor #{m.group(2)}")
        if name.endswith(".md"):
            for m in _MD_LINK.finditer(text):
                target = m.group(1)
                if re.match(r"[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                md = (Path(name).parent / file).as_posix() if file else name
                if not (ROOT / md).exists():
                    broken.append(f"{name}: link target {target} does not exist")
                elif anchor and md.endswith(".md") and anchor not in _headings(md)[1]:
                    broken.append(f"{name}: {md} has no heading with anchor #{anchor}")
        if is_doc:
            for m in _MODULE.finditer(text):
                problem = _resolve(m.group(1))
                if problem:
                    broken.append(f"{name}: {m.group(1).rstrip('.')} {problem}")
    return sorted(set(broken))


def test_every_cited_path_section_and_module_exists() -> None:
    broken = find_broken(_sources())
    assert not broken, "citations that name nothing:\n" + "\n".join(broken)


def test_docs_exist_and_the_readme_links_the_glossary() -> None:
    for name in ("ARCHITECTURE.md", "GLOSSARY.md", "REFERENCE-models.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"
    assert "docs/GLOSSARY.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see tests/wsi/test_nope.py", "tests/wsi/test_nope.py does not exist"),
        ("(``docs/REFERENCE-models.md`` §1.4, §99.1)", "has no section 99.1"),
        ("(REFERENCE §6.1)", "follows no docs/*.md path"),
        ("docs/ARCHITECTURE.md#no-such-heading", "no heading with anchor #no-such-heading"),
        (":func:`slidescope.wsi.no_such_function`", "slidescope.wsi.no_such_function is no module"),
        ("``slidescope.nomodule``", "slidescope.nomodule is no module"),
        ("tests/golden/make_<name>.npy", "does not exist"),
    ],
)
def test_the_checker_catches_a_broken_citation(text: str, expected: str) -> None:
    broken = find_broken([("slidescope/example.py", text, True)])
    assert any(expected in line for line in broken), broken


def test_the_checker_follows_markdown_links() -> None:
    good = "[the store](ARCHITECTURE.md#the-store), [README](../README.md#guarantees)"
    assert find_broken([("docs/X.md", good, True)]) == []
    broken = find_broken(
        [
            ("docs/X.md", "[a](GLOSSARY.md#nope) [b](NOPE.md)", True),
            ("docs/GLOSSARY.md", "[c](#glossary) [d](#nowhere)", True),
        ]
    )
    assert broken == [
        "docs/GLOSSARY.md: docs/GLOSSARY.md has no heading with anchor #nowhere",
        "docs/X.md: docs/GLOSSARY.md has no heading with anchor #nope",
        "docs/X.md: link target NOPE.md does not exist",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "tests/golden/make_<name>.py and tests/wsi/test_tissue*.py",
        "``docs/REFERENCE-models.md`` §1.4, §3.2, §3.3",
        "``docs/REFERENCE-models.md``\n§1.3, §2.3",
        ":func:`slidescope.wsi.open_slide`, ``slidescope.vlm.model.SlideTextModel``",
        "inside an installed wheel (``slidescope/_sample_data``)",
    ],
)
def test_the_checker_accepts_a_good_citation(text: str) -> None:
    assert find_broken([("slidescope/example.py", text, True)]) == []
