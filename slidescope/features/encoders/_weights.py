"""Finding and loading encoder weights: hub or local, safetensors first, never arbitrary pickles."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ...errors import SlidescopeError
from ._base import EncoderConfig

log = logging.getLogger(__name__)

__all__ = ["WeightsError", "resolve_weights", "read_state_dict", "load_into", "file_digest"]

#: file names tried, in order, inside a local weights directory or a hub snapshot
CANDIDATE_FILES = (
    "model.safetensors",
    "pytorch_model.safetensors",
    "pytorch_model.bin",
    "model.bin",
    "model.pth",
)


class WeightsError(SlidescopeError):
    """Weights are missing, unreachable, gated, or do not fit the architecture."""


def _gated_hint(config: EncoderConfig) -> str:
    terms = (
        f" Its licence: {config.license}" + (f" ({config.license_url})" if config.license_url else "") + "."
    )
    access = (
        f" The weights are gated: accept the terms on https://huggingface.co/{config.hub_id} and log in "
        f"(`hf auth login` or HF_TOKEN)."
        if config.gated
        else ""
    )
    return (
        f"{terms}{access} Or download them once and pass the file or folder: create_encoder({config.name!r}, "
        f"weights='PATH') / `--weights PATH`."
    )


def resolve_weights(config: EncoderConfig, weights: str | os.PathLike[str] | None) -> Path:
    """The local file holding ``config``'s weights: ``weights`` if given (file or folder), else the hub."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            # the hub path, its file name alone (a folder holding the downloaded file), then the usual names
            hub_names = [config.weights_file, Path(config.weights_file).name] if config.weights_file else []
            names = hub_names + list(CANDIDATE_FILES)
            for name in names:
                if (path / name).is_file():
                    return path / name
            raise WeightsError(
                f"no weights file for {config.name!r} in {path} (looked for {', '.join(dict.fromkeys(names))})."
            )
        if path.is_file():
            return path
        raise WeightsError(f"weights for {config.name!r} not found at {path}.{_gated_hint(config)}")
    if config.hub_id is None:
        raise WeightsError(f"{config.name!r} has no published weights source; pass weights='PATH'.")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - huggingface-hub is a core dependency
        raise WeightsError("huggingface-hub is not installed: `uv pip install huggingface-hub`") from err
    filename = config.weights_file or CANDIDATE_FILES[0]
    # "datasets/<owner>/<name>": a file in a dataset repository (CHIEF-CTransPath in MahmoodLab/hest-bench)
    repo, repo_type = config.hub_id, None
    if repo.startswith("datasets/"):
        repo, repo_type = repo[len("datasets/") :], "dataset"
    try:
        return Path(hf_hub_download(repo, filename, repo_type=repo_type))
    except Exception as err:  # network, auth (401/403 gated), offline mode, missing file: one message
        raise WeightsError(
            f"could not get the weights of {config.name!r} from the Hugging Face hub ({config.hub_id}/{filename}: "
            f"{type(err).__name__}).{_gated_hint(config)}"
        ) from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a pickle through ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError...: a truncated or damaged file
            raise WeightsError(
                f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it is "
                f"probably truncated or damaged: download it again."
            ) from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses arbitrary objects; corrupt files raise too
        raise WeightsError(
            f"{path} is not a plain tensor checkpoint (torch.load(weights_only=True) refused it: {err}). Convert it "
            f"to safetensors, or save only the state_dict."
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state_dict (found {type(obj).__name__}).")
    return obj


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, name: str, strict: bool = True) -> None:
    """Load ``state`` into ``module``; shape or key mismatches are a :class:`WeightsError` naming them."""
    own = module.state_dict()
    wrong = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(f"{k} {a} != {b}" for k, a, b in wrong[:5]))
        if strict and missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(
            f"these weights do not fit the {name!r} architecture: {'; '.join(parts)}. Check that the file is the "
            f"published checkpoint for {name!r} (another model's weights, or a fine-tuned head, give this error)."
        )
    module.load_state_dict(state, strict=strict)


def file_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a weights file, for provenance and cache validity."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()
