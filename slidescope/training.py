"""Lightning and DDP plumbing shared by :func:`slidescope.mil.train` and :func:`slidescope.vlm.pretrain`.

Neither layer owns this: both build ``lightning.Trainer`` objects the same way, learn which DDP rank they
are before anything is written, silence the same known-harmless Lightning messages, write run files
atomically (other ranks may read them) and end the rank processes a failed run launched.

Lightning is imported inside the functions that need it, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "quiet_lightning",
    "lightning_info",
    "lightning_quiet",
    "resolve_world",
    "ddp_strategy",
    "write_atomic",
    "fit_weights_only",
    "launched_processes",
    "end_processes",
]


def quiet_lightning() -> None:
    """Silence known-harmless Lightning messages; call inside ``warnings.catch_warnings()`` (warnings stay
    errors elsewhere), or use :func:`lightning_quiet` which does both."""
    # bags are read from an in-memory cache; worker processes would only add start-up time
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # tiny cohorts: fewer batches than the logging interval is expected
    warnings.filterwarnings("ignore", message=r".*number of training batches.*logging interval.*")
    # resuming writes into the fold's own checkpoint folder on purpose
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # CPU-only hosts: Lightning points out that a GPU/TPU/HPU could be used (only when one exists)
    warnings.filterwarnings("ignore", message=r".*available but not used.*")
    # torch >= 2.10 deprecates LeafSpec, which lightning's CombinedLoader still constructs
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*", category=FutureWarning)
    # torchmetrics: a validation set may lack a class in early epochs of a small cohort
    warnings.filterwarnings("ignore", message=r".*No (positive|negative) samples in targets.*")


@contextlib.contextmanager
def lightning_info(show: bool) -> Iterator[None]:
    """Lightning logs "GPU available...", tips and stop reasons at INFO to stdout: keep them when ``show``
    (a ``progress`` option), else raise its loggers to WARNING for the duration of the block."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    if not show:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


@contextlib.contextmanager
def lightning_quiet(show_info: bool) -> Iterator[None]:
    """``warnings.catch_warnings()`` with :func:`quiet_lightning` applied, and :func:`lightning_info`: the
    block in which a Trainer is built or fitted. More filters may be added inside; all are undone on exit."""
    with warnings.catch_warnings(), lightning_info(show_info):
        quiet_lightning()
        yield


def resolve_world(
    *,
    accelerator: str,
    devices: int | str,
    num_nodes: int,
    strategy: str,
    precision: str | None,
    progress: bool,
) -> tuple[int, int]:
    """``(world_size, global_rank)`` of this process, as Trainers built with these options will see them.

    A Trainer resolves both at construction from Lightning's cluster environments (its own launcher's
    ``LOCAL_RANK``/``NODE_RANK``, SLURM, torchrun, LSF...) without launching anything, so this is known
    before a run writes a file or starts another process.
    """
    import lightning as L

    with lightning_quiet(progress):
        probe = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    return int(probe.world_size), int(probe.global_rank)


def ddp_strategy(strategy: str, world_size: int, *, find_unused_parameters: bool) -> Any:
    """The Trainer's ``strategy``: ``"auto"`` on several processes becomes DDP (Lightning's script launcher)
    with ``find_unused_parameters`` as given; any other name, or one process, is passed through."""
    if strategy != "auto" or world_size == 1:
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=find_unused_parameters)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a concurrent reader (another rank) sees the old file or the new one, never
    half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fit_weights_only(trainer: Any) -> dict[str, bool]:
    """Keyword arguments for ``trainer.fit(..., ckpt_path=...)`` that load the checkpoint with
    ``weights_only=True``: ``{"weights_only": True}`` where this Lightning takes it (2.5 and later), else
    ``{}``.

    With an older Lightning the caller must check the checkpoint with ``torch.load(weights_only=True)``
    itself first (as :func:`~slidescope.mil.task.check_resume_checkpoint` does); torch >= 2.6 defaults to it.
    """
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def launched_processes(trainer: Any) -> list[Any]:
    """The rank processes Lightning's launcher started for ``trainer`` (rank 0 of a DDP run started from a
    shell or script); empty on one device or under an external launcher (SLURM, torchrun)."""
    return list(getattr(trainer.strategy.launcher, "procs", None) or [])


def end_processes(processes: list[Any]) -> None:
    """Kill the still-running ``processes`` (``subprocess.Popen``) of :func:`launched_processes`: after a
    failure on rank 0 the other ranks would otherwise wait in their next collective until its timeout."""
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
