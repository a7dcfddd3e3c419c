"""The store's errors: what went wrong, each message saying what to do next."""

from __future__ import annotations

import errno

from ..._location import Location, location_name
from ...errors import SlidescopeError


class StoreError(SlidescopeError):
    """The embedding store cannot be used as asked."""


class StoreCorruptError(StoreError):
    """A chunk is missing or failed its checksum, or the metadata cannot be parsed or is inconsistent."""


class IncompleteStoreError(StoreError):
    """Embeddings were asked for that are not completely written."""


class SlideClaimedError(StoreError):
    """Another live process is writing this slide's store."""


class ForeignPathError(StoreError):
    """A store should go where something slidescope did not write lies (it is never deleted)."""


class NewerStoreError(StoreError):
    """The store was written by a newer slidescope (a higher schema version); it is never deleted."""


class SlideMismatchError(StoreError):
    """The store was made from another slide file (or the slide changed while it was processed)."""


class DiskFullError(StoreError):
    """No space left on the device where a store or its claim is written."""


def _store_fix(path: Location) -> str:
    """The advice for a damaged store (the extraction rebuilds the damaged part)."""
    parent = location_name(path)
    return (
        f"Run `slidescope extract` on the slide {parent[: -len('.zarr')] if parent.endswith('.zarr') else parent!r} "
        f"again with the same --out: it re-extracts the damaged part (a partial copy or sync, or an edited file "
        f"does this)"
    )


def _disk_full(path: Location, err: OSError) -> DiskFullError:
    return DiskFullError(
        f"no space left on the device to write {path} ({err}). Free some space (or write the "
        f"stores elsewhere with another --stores) and run again: nothing of this slide was claimed."
    )


def _no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
