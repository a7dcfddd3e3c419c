"""The claim on a slide's store: one writer at a time, in a local folder or on any fsspec file system.

A run claims a slide by creating the lock file ``<key>.zarr.lock`` next to the store, exclusively, holding
``{"host", "pid", "since"}`` as JSON, and deletes it when it is done. The protocol is one (:func:`claim`,
over fsspec: the local file system for a local folder); only its atomic create step differs
(:meth:`_Lock.create`):

* local folder: the content goes to a temporary file in the same folder first, which is then hard-linked
  to the lock name (``link`` fails if the name exists: as exclusive as ``O_EXCL``), so the lock never
  exists empty or half-written, whatever happens while writing (a full disk, a kill). File systems without
  hard links fall back to ``O_EXCL`` + write, removing the lock again when the write fails.
* other file systems (object stores): an exclusive create of the lock object (``If-None-Match: *`` on
  S3), written in one request, so never half-written either.

A claim is stale, and taken over with a warning, when its process is gone (same host), or when it is empty
or unreadable and older than :data:`CLAIM_GRACE_S` seconds (left by an older slidescope whose write failed;
only a local lock has such an age: an object store's lock is written whole or not at all). A claim left by
a dead process on another host has to be deleted by hand: the error names it. A full disk fails the claim
with :class:`DiskFullError` and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from ..._location import Location, as_location, location_name
from ._errors import SlideClaimedError, _disk_full, _no_space
from ._keys import _now

log = logging.getLogger("slidescope.features.store")

#: an empty or unreadable claim file older than this (seconds) is stale: its writer failed mid-write
CLAIM_GRACE_S = 60.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _Lock:
    """The lock file of a store's claim: ``shown`` (``<store>.lock`` as the user named the store, for
    messages) and its path ``inner`` on the fsspec file system ``fs``."""

    shown: Location
    fs: Any
    inner: str

    @classmethod
    def of(cls, store: Location) -> _Lock:
        import fsspec

        if isinstance(store, Path):
            return cls(
                store.with_name(store.name + ".lock"), fsspec.filesystem("file"), f"{store.absolute()}.lock"
            )
        fs, inner = fsspec.core.url_to_fs(store)
        return cls(f"{store}.lock", fs, f"{inner}.lock")

    @property
    def local(self) -> bool:
        return isinstance(self.shown, Path)

    def create(self, payload: bytes) -> bool:
        """Create the lock holding ``payload``, atomically; False if it exists already.

        The one step that depends on the file system (see the module docstring)."""
        if self.local:
            return _create_local(Path(self.inner), payload)
        try:
            with self.fs.open(self.inner, "xb") as fh:  # S3: a conditional put (If-None-Match: *)
                fh.write(payload)
        except FileExistsError:
            return False
        return True

    def read(self) -> dict[str, Any]:
        """The claim's content; ``{}`` when empty, unreadable, gone or not a JSON object."""
        try:
            data = json.loads(self.fs.cat_file(self.inner).decode() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def age_s(self) -> float | None:
        """Seconds since the lock was written; None on an object store (its lock is never half-written, so
        no age rule applies). Raises FileNotFoundError when the lock is gone."""
        if not self.local:
            return None
        return time.time() - float(self.fs.info(self.inner)["mtime"])

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.inner)


def _create_local(lock: Path, payload: bytes) -> bool:
    """The local create step: :func:`_write_claim_file`, then the leftovers of dead writers are removed."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if not _write_claim_file(lock, payload):
        return False
    _remove_dead_writers_tmp(lock, socket.gethostname())
    return True


def _write_claim_file(lock: Path, payload: bytes) -> bool:
    """Create ``lock`` holding ``payload``, atomically; False if it exists already.

    The content goes to a temporary file in the same folder first, which is then hard-linked to the lock
    name (``link`` fails if the name exists: as exclusive as ``O_EXCL``), so a lock file never exists
    empty or half-written, whatever happens while writing (a full disk, a kill). File systems without
    hard links fall back to ``O_EXCL`` + write, removing the lock again when the write fails."""
    # host and pid in the name: a later claim removes the leftovers of a writer killed between the two steps
    tmp = lock.with_name(f".{lock.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
        # no hard links here: exclusive create, and never leave an empty lock behind
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            raise
        os.close(fd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _remove_dead_writers_tmp(lock: Path, host: str) -> None:
    """Remove the temporary claim files of writers on this host that died (kill -9) before cleaning up."""
    for tmp in lock.parent.glob(f".{glob_escape(lock.name)}.*.tmp"):
        parts = tmp.name[len(lock.name) + 2 : -len(".tmp")].rsplit(".", 2)  # host (may hold dots), pid, uuid
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not pid_alive(int(parts[1])):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _stale(other: dict[str, Any], host: str, age_s: float | None) -> str | None:
    """Why a claim held by ``other`` is stale (None: it is live)."""
    if not other:  # empty or unreadable: its writer failed while writing it (e.g. a full disk)
        if age_s is not None and age_s > CLAIM_GRACE_S:
            return f"it is empty or unreadable and {age_s:.0f} s old"
        return None
    if other.get("host") == host and isinstance(other.get("pid"), int) and not pid_alive(other["pid"]):
        return f"pid {other['pid']} is gone"
    return None


def _claimed(path: Location, lock: Location, other: dict[str, Any]) -> SlideClaimedError:
    return SlideClaimedError(
        f"{location_name(path)} is being written by another run (host {other.get('host', '?')}, pid "
        f"{other.get('pid', '?')}, since {other.get('since', '?')}). Wait for it, or delete {lock} if that "
        f"run is dead."
    )


@contextlib.contextmanager
def claim(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive claim on a slide store while writing it (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The store, a local folder or an fsspec URL (``store_path(root, slide)``); the lock is
        ``<path>.lock``.

    Raises
    ------
    SlideClaimedError
        Another live process holds it.
    DiskFullError
        The claim cannot be written for lack of space (nothing is left behind: the next run can claim it).
    """
    store = as_location(path)
    lock = _Lock.of(store)
    host = socket.gethostname()
    payload = json.dumps({"host": host, "pid": os.getpid(), "since": _now()}).encode()
    for _ in range(2):
        try:
            if lock.create(payload):
                break
        except OSError as err:
            if _no_space(err):
                raise _disk_full(lock.shown, err) from err
            raise
        other = lock.read()
        try:
            age = lock.age_s()
        except FileNotFoundError:  # released meanwhile: try again
            continue
        why = _stale(other, host, age)
        if why is not None:
            log.warning("%s: taking over a stale claim (%s)", location_name(store), why)
            lock.remove()
            continue
        raise _claimed(store, lock.shown, other)
    else:  # pragma: no cover - two takeovers in a row lost the race
        raise SlideClaimedError(f"could not claim {location_name(store)}; another run keeps taking it")
    try:
        yield
    finally:
        lock.remove()
