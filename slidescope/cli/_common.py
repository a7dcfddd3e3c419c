"""Options that several commands share, written once as ``Annotated`` types (typer reads them from there).

The stores triple (positional STORES, ``--stores`` folders, ``--store`` stores; parsed by
:func:`~slidescope.cli._locations.store_list`), the compute device of the scoring commands, and the
Lightning distributed-training options of ``train`` and ``pretrain``. A command states its default in its
own signature (``device: Device = "cpu"``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._locations import STORE_HELP, STORES_HELP

__all__ = [
    "StoresArg",
    "StoresOpt",
    "StoreOpt",
    "ModelEncoder",
    "ModelWeights",
    "TrustRemoteCode",
    "Device",
    "Accelerator",
    "Devices",
    "NumNodes",
    "Strategy",
]

StoresArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Slide stores (<slide>.zarr) or store folders; local paths or fsspec URLs "
        "(or give --stores / --store).",
        show_default=False,
    ),
]
StoresOpt = Annotated[list[str] | None, typer.Option("--stores", help=STORES_HELP, show_default=False)]
StoreOpt = Annotated[list[str] | None, typer.Option("--store", help=STORE_HELP, show_default=False)]

#: the published-model options of prompt-spread and few-shot
ModelEncoder = Annotated[
    str | None,
    typer.Option(
        help="The tile embeddings the model was pretrained on (default for published models: the one they need).",
        show_default=False,
    ),
]
ModelWeights = Annotated[
    str | None,
    typer.Option(help="A published model's downloaded repository (default: hub).", show_default=False),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow PRISM's / TITAN's own model code to run; required for them."
    ),
]

Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1...")]

Accelerator = Annotated[str, typer.Option(help="Lightning accelerator: auto, cpu, gpu...")]
Devices = Annotated[
    int,
    typer.Option(
        help="Devices per node; more than 1 (or --num-nodes > 1) trains with DDP, one process per device "
        "(the effective batch is --batch-size x devices x nodes).",
    ),
]
NumNodes = Annotated[
    int,
    typer.Option(
        "--num-nodes",
        help="Nodes (DDP). Under SLURM: srun slidescope <command> ... --devices 4 --num-nodes 2 "
        "(Lightning detects the cluster).",
    ),
]
Strategy = Annotated[
    str,
    typer.Option(
        help="Lightning strategy: auto (DDP on several devices; pretrain: DDP finding unused parameters) "
        "or another Lightning strategy name, e.g. ddp_find_unused_parameters_true.",
    ),
]
