"""Make a slidescope prompt file from TITAN's published zero-shot prompts, read from your own TITAN checkout.

    git clone https://github.com/mahmoodlab/TITAN
    python examples/titan_prompts.py TITAN --out prompts_titan_tcga-ot.yaml
    slidescope zero-shot --model titan --weights /models/titan --trust-remote-code \
        --prompts prompts_titan_tcga-ot.yaml --encoder conch-v1.5 STORES... --out zs.csv

Why a converter and not the file itself: TITAN's repository is licensed CC-BY-NC-ND 4.0 (non-commercial, no
derivatives), slidescope is Apache-2.0, so slidescope does not redistribute TITAN's text. This script reads
the two places the prompts live in that repository (checked at commit 33042f5):

- ``titan/utils.py``: ``TEMPLATES``, the list of zero-shot templates with ``CLASSNAME`` as the placeholder
  (read with ``ast``; nothing of TITAN is imported or run);
- ``datasets/config_<task>.yaml``: ``label_dict`` (class -> index: the class order) and ``prompts``
  (class -> phrasings).

The result keeps TITAN's class order and its ``CLASSNAME`` placeholder (slidescope's prompt loader accepts it
as well as ``{}``), and records where it came from in a header comment.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import yaml


def read_templates(utils_py: Path) -> list[str]:
    """The literal list assigned to ``TEMPLATES`` in ``utils_py`` (parsed, not executed)."""
    for node in ast.parse(utils_py.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TEMPLATES" for t in node.targets
        ):
            templates = ast.literal_eval(node.value)
            if isinstance(templates, list) and all(isinstance(t, str) for t in templates):
                return templates
    raise SystemExit(f"error: no TEMPLATES list of strings in {utils_py}; is this a TITAN checkout?")


def titan_prompts(checkout: Path, task: str = "tcga-ot") -> dict:
    """``{"templates": [...], "classes": {name: [phrasings]}}`` from a TITAN checkout, in TITAN's class order."""
    config_path = checkout / "datasets" / f"config_{task}.yaml"
    if not config_path.is_file():
        raise SystemExit(
            f"error: {config_path} not found; pass the root of a TITAN checkout and an existing --task"
        )
    config = yaml.safe_load(config_path.read_text())
    labels, prompts = config.get("label_dict"), config.get("prompts")
    if not isinstance(labels, dict) or not isinstance(prompts, dict):
        raise SystemExit(f"error: {config_path} has no label_dict/prompts mappings")
    missing = sorted(set(labels) - set(prompts))
    if missing:
        raise SystemExit(f"error: {config_path}: classes without prompts: {', '.join(map(str, missing))}")
    order = sorted(labels, key=lambda name: labels[name])
    classes = {str(name): [str(p) for p in prompts[name]] for name in order}
    return {"templates": read_templates(checkout / "titan" / "utils.py"), "classes": classes}


def _commit(checkout: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit (not a git checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="root of a mahmoodlab/TITAN checkout")
    parser.add_argument(
        "--task", default="tcga-ot", help="datasets/config_<task>.yaml to read (default tcga-ot)"
    )
    parser.add_argument("--out", type=Path, required=True, help="prompt YAML to write")
    args = parser.parse_args(argv)
    data = titan_prompts(args.checkout, args.task)
    header = (
        f"# TITAN's zero-shot prompts ({len(data['classes'])} classes, {len(data['templates'])} templates), "
        f"converted by slidescope's examples/titan_prompts.py\n"
        f"# from mahmoodlab/TITAN @ {_commit(args.checkout)}: titan/utils.py TEMPLATES and "
        f"datasets/config_{args.task}.yaml (label_dict order, prompts).\n"
        "# Licence of the source: CC-BY-NC-ND 4.0 (Mahmood Lab); for your own use, do not redistribute.\n"
    )
    args.out.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    print(f"wrote {args.out}: {len(data['classes'])} classes, {len(data['templates'])} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
