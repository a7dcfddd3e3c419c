"""Class prompts of zero-shot classification: :class:`Prompts` and :func:`load_prompts` (a YAML file or a mapping).

Re-exported by :mod:`slidescope.vlm.api`, where they are documented for users.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .._location import require_local
from ..errors import InvalidParameterError
from .zeroshot import build_prompts

__all__ = ["Prompts", "load_prompts"]


@dataclass(frozen=True)
class Prompts:
    """Class phrasings and the templates they go into.

    Attributes
    ----------
    classes : dict of str to list of str
        Class name -> its phrasings (synonyms); the order of the classes is the column order of every score.
    templates : list of str or None
        Each holds ``{}`` (or ``CLASSNAME``) where a phrasing goes; ``None``: phrasings as they are.

    Examples
    --------
    >>> p = Prompts({"LUAD": ["lung adenocarcinoma"], "LUSC": ["squamous cell carcinoma"]}, ["an image of {}."])
    >>> p.build()[0]
    ['an image of lung adenocarcinoma.', 'an image of squamous cell carcinoma.']
    """

    classes: dict[str, list[str]]
    templates: list[str] | None = None

    def build(self) -> tuple[list[str], Tensor]:
        """``(prompts (P,), prompt_class (P,))`` as :func:`~slidescope.vlm.zeroshot.build_prompts`."""
        return build_prompts(self.classes, self.templates)

    @property
    def names(self) -> list[str]:
        return list(self.classes)


def _check_classes(classes: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(classes, Mapping) or not classes:
        raise InvalidParameterError(
            f"{where}: the prompt set is empty; give classes as "
            "{class: [phrasing, ...]} with at least two classes"
        )
    out: dict[str, list[str]] = {}
    for name, phrasings in classes.items():
        if isinstance(phrasings, str):
            phrasings = [phrasings]
        if not isinstance(phrasings, Sequence):
            raise InvalidParameterError(f"{where}: class {name!r} must map to a list of phrasings")
        kept = [str(p).strip() for p in phrasings if p is not None and str(p).strip()]
        if not kept:
            raise InvalidParameterError(
                f"{where}: class {name!r} has no phrasings; give at least one description"
            )
        out[str(name)] = kept
    if len(out) < 2:
        raise InvalidParameterError(
            f"{where}: zero-shot classification needs at least two classes, got {list(out)}"
        )
    return out


def _from_conch_format(data: Any, where: str) -> Any:
    """CONCH's own prompt files (mahmoodlab/CONCH ``prompts/*_prompts_all_per_class.json``: ``{"0": {"classnames":
    {class: [phrasings]}, "templates": ["... CLASSNAME ..."]}}``) as ``{"classes", "templates"}``; anything
    else unchanged. CONCH's zero-shot code reads entry ``"0"``; so does this."""
    if not isinstance(data, Mapping) or "classes" in data:
        return data
    entries = {k: v for k, v in data.items() if isinstance(v, Mapping) and "classnames" in v}
    if not entries:
        return data
    entry = entries.get("0", entries.get(0))
    if entry is None:
        if len(entries) > 1:
            raise InvalidParameterError(
                f"{where}: a CONCH prompt file with entries {sorted(map(str, entries))} and no entry '0'; "
                "keep the one to use as entry '0'"
            )
        (entry,) = entries.values()
    return {"classes": entry["classnames"], "templates": entry.get("templates")}


def load_prompts(
    source: str | os.PathLike[str] | Mapping[str, Any] | Prompts, templates: Sequence[str] | None = None
) -> Prompts:
    """Read and check class prompts.

    Parameters
    ----------
    source : path, mapping or Prompts
        A YAML file (``classes: {name: [phrasing, ...]}`` and optional ``templates: ["a slide of {}.", ...]``),
        a CONCH prompt file as published with its zero-shot tasks (mahmoodlab/CONCH ``prompts/*.json``, read
        as it is), a ``{class: [phrasings]}`` mapping, or a ``{"classes": ..., "templates": ...}`` mapping.
    templates : list of str, optional
        Replaces the source's templates; ``[]`` means the phrasings as they are.

    Returns
    -------
    Prompts
        Checked: at least two classes, each with at least one non-blank phrasing; every template has a
        placeholder. Anything else raises :class:`~slidescope.errors.InvalidParameterError` naming the problem.

    Examples
    --------
    >>> p = load_prompts({"tumour": ["carcinoma", "malignant cells"], "normal": ["benign tissue"]},
    ...                  templates=["an H&E image of {}."])
    >>> p.names, len(p.build()[0])
    (['tumour', 'normal'], 3)
    >>> load_prompts({"tumour": ["carcinoma"], "normal": []})
    Traceback (most recent call last):
    ...
    slidescope.errors.InvalidParameterError: classes: class 'normal' has no phrasings; give at least one description
    """
    if isinstance(source, Prompts):
        data: Any = {"classes": source.classes, "templates": source.templates}
        where = "prompts"
    elif isinstance(source, Mapping):
        data = dict(source) if "classes" in source else {"classes": dict(source)}
        where = "classes"
    else:
        import yaml

        path = require_local(source, "the prompts file")
        if not path.is_file():
            raise InvalidParameterError(f"prompts file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InvalidParameterError(f"{path} is not valid YAML: {err}") from err
        where = path.name
        data = _from_conch_format(data, where)
        if not isinstance(data, Mapping) or "classes" not in data:
            raise InvalidParameterError(
                f"{where}: expected a mapping with 'classes: {{name: [phrasing, ...]}}' "
                "and optional 'templates: [...]'"
            )
    classes = _check_classes(data.get("classes"), where)
    tmpl = templates if templates is not None else data.get("templates")
    if tmpl is not None:
        if isinstance(tmpl, str) or not isinstance(tmpl, Sequence):
            raise InvalidParameterError(f"{where}: templates must be a list of strings with '{{}}'")
        tmpl = [str(t) for t in tmpl] or None
    prompts = Prompts(classes=classes, templates=tmpl)
    prompts.build()  # validates the templates
    return prompts
