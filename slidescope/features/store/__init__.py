"""The embedding store: one Zarr v3 group per slide, safe to reuse, resume and share.

Layout of ``<root>/<slide key>.zarr`` (schema 2)::

    zarr.json               attrs: format = "slidescope.slide-store" (the marker: the folder is ours),
                            schema_version, slide{name, path, fingerprint, size, reader, backend, mpp,
                            mpp_source, dimensions}, package_version, created, updated
    tilings/<tiling key>/   one sub-group per tiling, side by side (e.g. 224 px and 512 px encoders);
                            attrs: tiling{grid parameters, effective mpp...}, slide{reader, backend, mpp,
                            mpp_source}, n_tiles, created, updated. The key is
                            ``<tile size>px_<mpp>mpp_<8 hex digits of the tiling's SHA-256>``.
        coords              (N, 2) int64   level-0 top-left (x, y) of every tile
        tissue_fraction     (N,)   float32
        pad_fraction        (N,)   float32 part of each tile outside the slide (edge="pad"; read as zeros
                                   from stores made before it)
        qc/<measure>        (N,)   float32 per-tile QC measures (focus, brightness...; only with --qc flag
                                   or exclude, see slidescope.wsi.qc_tiles)
        features/<encoder>/ attrs: encoder config, weights_digest, precision, dtype, chunk_rows, complete,
                                   n_tiles, embed_dim, timings
            embeddings      (N, D) float16 (float32 on request), chunks of ``chunk_rows`` tiles
            done            (n_chunks,) uint8, one marker chunk per embeddings chunk, written after it
        slide_embeddings/<model>  (D,) or (K, D) slide-level vectors, attrs say which model made them
        scores/<name>       (N,) or (N, K) per-tile scores (attention, probabilities, similarities)

A schema-1 store (slidescope before the tilings; one tiling at the top level, no marker) is still read
as it is; extraction rewrites it in schema 2 (its embeddings are recomputed).

Trust rules:

* Every chunk carries a CRC32C checksum (zarr's ``crc32c`` codec) and every chunk is written, even one
  equal to the fill value. A read checks that every chunk file exists (zarr alone would read a missing
  one as zeros) and its checksum holds; a missing or corrupt chunk raises :class:`StoreCorruptError`.
* Metadata is validated on open and before embeddings are handed out: the marker and schema, dtype
  and shape of every array against the recorded cache key (``coords`` rows == ``embeddings`` rows ==
  ``n_tiles``, width == the encoder's ``embed_dim``), the checksum codec present; unreadable metadata
  (a truncated ``zarr.json``) is a :class:`StoreCorruptError`, never a traceback.
* An encoder's embeddings are *complete* only when every ``done`` marker is set and the group's
  ``complete`` attribute is written, last. Readers refuse incomplete embeddings. Extraction reuses
  complete embeddings only after reading them back whole (checksums and chunks verified); damaged ones
  are recomputed.
* A cached result is reused only if the schema version, slide fingerprint, reader, tiling
  parameters, encoder config, weights digest, precision, dtype and package version all match;
  otherwise it is recomputed (the mismatch is logged), never mixed. Extraction re-fingerprints the
  slide before marking embeddings complete; a slide replaced meanwhile fails with
  :class:`SlideMismatchError` and is redone by the next run. :meth:`SlideStore.check_slide` lets a
  consumer that has the slide (heatmaps, the batch run) refuse a store made from another file.
* Ownership: slidescope deletes only inside a folder whose marker says it is a slidescope store (or a
  schema-1 store). Any other path where a store should go (an OME-Zarr, a file, a non-empty folder) is
  refused with :class:`ForeignPathError`; a store of a newer schema with :class:`NewerStoreError`.
* A run killed at any moment resumes from the last chunk whose marker was written: a marker is
  written only after its chunk, so a half-written chunk is simply redone. In a local store chunk files
  are written as zarr writes them (a temporary file renamed into place, byte for byte zarr's format, so
  plain zarr reads and verifies them) without going through zarr's codec pipeline; nothing is fsync'ed
  (as with zarr and h5py): after a power cut the checksums and markers tell what to redo.
* Two runs on the same folder: a slide is claimed with an exclusive lock file
  (``<key>.zarr.lock``); its content is written to a temporary file first and then hard-linked into
  place, so the lock never exists empty (a full disk fails the claim with :class:`DiskFullError` and
  leaves nothing behind). A claim whose process is gone (same host), or an empty/unreadable claim older
  than :data:`CLAIM_GRACE_S` seconds (left by an older slidescope), is stale and taken over.

Where stores live: a local folder, or any fsspec URL (``s3://bucket/stores``, ``gs://...``,
``memory://...``; ``file://`` is a local folder). Zarr reads and writes remote stores through fsspec;
credentials and endpoints come from fsspec's configuration, e.g. the usual AWS variables plus
``FSSPEC_S3_ENDPOINT_URL=http://host:port`` for an S3-compatible server. On object stores the claim is
an exclusive create of the lock object (``If-None-Match: *`` on S3, written in one request); a claim
left by a dead process on another host has to be deleted by hand (the error names it).

The package's modules: ``_store`` (:class:`SlideStore`, :func:`open_store`), ``_layout`` (the schema, the
ownership marker and checked access to groups and arrays), ``_writer`` (:class:`EmbeddingWriter`, the
write order above), ``_fastread`` (checked reads and fast writes of chunk files with their CRC32C),
``_claim`` (the claim: one protocol for local folders and fsspec file systems), ``_keys`` (slide, tiling
and cache keys, where a store lives) and ``_errors``.
"""

from __future__ import annotations

from ..._location import as_location, location_name
from ._claim import CLAIM_GRACE_S as CLAIM_GRACE_S, claim, pid_alive as pid_alive
from ._errors import (
    DiskFullError,
    ForeignPathError,
    IncompleteStoreError,
    NewerStoreError,
    SlideClaimedError,
    SlideMismatchError,
    StoreCorruptError,
    StoreError,
)
from ._fastread import _checksummed as _checksummed, _read as _read  # the benchmarks use them
from ._keys import (
    CacheKey as CacheKey,
    is_remote,
    slide_fingerprint,
    slide_key as slide_key,
    store_path,
    tiling_key,
)
from ._layout import SCHEMA_VERSION, STORE_FORMAT
from ._qc import open_qc_store, qc_geojson, read_qc_thresholds, settle_qc
from ._store import DEFAULT_CHUNK_ROWS as DEFAULT_CHUNK_ROWS, SlideStore, open_store
from ._writer import BackgroundWriter as BackgroundWriter, EmbeddingWriter as EmbeddingWriter

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FORMAT",
    "StoreError",
    "StoreCorruptError",
    "IncompleteStoreError",
    "SlideClaimedError",
    "ForeignPathError",
    "NewerStoreError",
    "SlideMismatchError",
    "DiskFullError",
    "SlideStore",
    "open_store",
    "qc_geojson",
    "open_qc_store",
    "read_qc_thresholds",
    "settle_qc",
    "slide_fingerprint",
    "store_path",
    "tiling_key",
    "claim",
    "as_location",
    "is_remote",
    "location_name",
]
