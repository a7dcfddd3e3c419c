"""The store's chunk-file fast paths (``_fastread``): what they write is byte for byte what zarr writes,
plain zarr reads and verifies it, stores written through zarr (the store before the fast paths) still
open and verify, and a write that fails or stops half-way leaves the store resumable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from slidescope.features.store import CacheKey, SlideStore, StoreCorruptError, _fastread, _writer, open_store

N, D, ROWS = 45, 24, 8  # 6 chunks, the last one (5 rows) padded


def _no_files(array) -> None:
    return None


@pytest.fixture
def through_zarr(monkeypatch):
    """Switch the fast paths off: every chunk written and read by zarr, as the store did before them."""

    def on() -> None:
        monkeypatch.setattr(_fastread, "_chunk_files", _no_files)
        monkeypatch.setattr(_writer, "_chunk_files", _no_files)

    return on


def _store(root: Path, dtype: str = "float16") -> tuple[SlideStore, CacheKey]:
    store = SlideStore.create_or_open(
        root / "s.zarr",
        slide_attrs={"fingerprint": "test"},
        tiling={"tile": 64},
        coords=np.arange(2 * N, dtype=np.int64).reshape(N, 2),
        tissue_fraction=np.linspace(0, 1, N, dtype=np.float32),
    )
    return store, CacheKey({"name": "enc"}, None, "fp32", dtype, "test")


def _write(root: Path, data: np.ndarray, *, finish: bool = True) -> SlideStore:
    store, key = _store(root, str(data.dtype))
    writer = store.prepare_embeddings(key, embed_dim=data.shape[1], chunk_rows=ROWS)
    for c in range(-(-len(data) // ROWS)):
        writer.write_chunk(c, data[c * ROWS : (c + 1) * ROWS])
    if finish:
        writer.finish()
    return store


def _files(root: Path, what: str) -> dict[str, bytes]:
    (folder,) = root.glob(f"s.zarr/**/features/enc/{what}")
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _data(dtype: str) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, D)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunk_files_are_byte_for_byte_zarrs_and_plain_zarr_verifies_them(
    dtype, tmp_path, monkeypatch, through_zarr
) -> None:
    data = _data(dtype)
    store = _write(tmp_path / "fast", data)
    assert _writer.EmbeddingWriter(store, store._features()["enc"])._files is not None  # the fast path ran
    through_zarr()
    _write(tmp_path / "zarr", data)
    monkeypatch.undo()
    for what in ("embeddings", "done"):
        fast, ref = _files(tmp_path / "fast", what), _files(tmp_path / "zarr", what)
        assert fast == ref and len([k for k in fast if k != "zarr.json"]) == 6
    # plain zarr (its own crc32c codec checks every chunk) reads what the fast path wrote
    (group,) = (tmp_path / "fast").glob("s.zarr/**/features/enc")
    plain = zarr.open_group(str(group), mode="r")
    emb, done = plain["embeddings"], plain["done"]
    assert isinstance(emb, zarr.Array) and isinstance(done, zarr.Array)
    assert np.array_equal(np.asarray(emb[:]), data) and np.asarray(done[:]).tolist() == [1] * 6
    assert not list((tmp_path / "fast").rglob("*.partial"))  # every temporary file renamed into place


def test_store_written_through_zarr_opens_and_verifies_with_the_fast_read(
    tmp_path, monkeypatch, through_zarr
) -> None:
    data = _data("float16")
    through_zarr()
    _write(tmp_path, data)
    written = _files(tmp_path, "embeddings")
    monkeypatch.undo()  # the fast paths back on
    store = open_store(tmp_path / "s.zarr", encoder="enc")
    assert _fastread._chunk_files(store.embeddings("enc", lazy=True)) is not None
    assert np.array_equal(store.embeddings("enc"), data)
    assert np.array_equal(store.coords, np.arange(2 * N).reshape(N, 2))
    (chunk,) = (tmp_path / "s.zarr").rglob("embeddings/c/2/0")
    raw = bytearray(written["c/2/0"])
    raw[3] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match="chunk 2: stored and computed checksum do not match"):
        open_store(tmp_path / "s.zarr").embeddings("enc")
    chunk.write_bytes(written["c/2/0"][:-1])  # truncated
    with pytest.raises(StoreCorruptError, match="chunk 2 holds"):
        open_store(tmp_path / "s.zarr").embeddings("enc")
    chunk.unlink()
    with pytest.raises(StoreCorruptError, match=r"chunk file c/2/0 \(chunk 2\) is missing"):
        open_store(tmp_path / "s.zarr").embeddings("enc")


def test_other_layouts_go_through_zarr(tmp_path) -> None:
    group = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    crc = _fastread._checksummed()
    split = group.create_array("split", shape=(10, 6), chunks=(5, 3), dtype="float32", compressors=crc)
    packed = group.create_array(
        "packed", shape=(10, 6), chunks=(5, 6), dtype="float32", compressors=[zarr.codecs.ZstdCodec(), *crc]
    )
    filled = group.create_array(
        "filled", shape=(10,), chunks=(5,), dtype="float32", compressors=crc, fill_value=1.5
    )
    remote = zarr.open_group("memory://fastio", mode="w").create_array(
        "e", shape=(10, 6), chunks=(5, 6), dtype="float32", compressors=crc
    )
    values = np.arange(60, dtype=np.float32).reshape(10, 6)
    for array in (split, packed, remote):
        assert _fastread._chunk_files(array) is None
        array[:] = values
        assert np.array_equal(_fastread._read(array), values)  # zarr's path, every chunk checked
    assert _fastread._chunk_files(filled) is None  # an edge chunk would be padded with 1.5, not zeros
    ok = group.create_array(
        "ok", shape=(10, 6), chunks=(4, 6), dtype="float32", compressors=crc, fill_value=0
    )
    assert _fastread._chunk_files(ok) is not None


def test_a_chunk_without_its_marker_is_redone_and_a_failed_write_leaves_nothing(
    tmp_path, monkeypatch
) -> None:
    data = _data("float16")
    store = _write(tmp_path, data, finish=False)
    (marker,) = (tmp_path / "s.zarr").rglob("features/enc/done/c/3")
    marker.unlink()  # killed between chunk 3 and its marker
    store, key = _store(tmp_path)
    writer = store.prepare_embeddings(key, embed_dim=D, chunk_rows=ROWS)
    assert writer.done_chunks().tolist() == [True, True, True, False, True, True]
    assert np.array_equal(writer.pending_indices(), np.arange(24, 32))

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        writer.write_chunk(3, data[24:32])
    monkeypatch.undo()
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))  # the temporary file is removed
    assert writer.done_chunks().tolist()[3] is False
    writer.write_chunk(3, data[24:32])
    writer.finish()
    assert np.array_equal(open_store(tmp_path / "s.zarr").embeddings("enc"), data)


def test_torn_marker_counts_as_not_done(tmp_path) -> None:
    _write(tmp_path, _data("float16"), finish=False)
    (marker,) = (tmp_path / "s.zarr").rglob("features/enc/done/c/1")
    marker.write_bytes(marker.read_bytes()[:2])  # a marker cut short (a crash mid-write without rename)
    store, key = _store(tmp_path)
    writer = store.prepare_embeddings(key, embed_dim=D, chunk_rows=ROWS)
    assert writer.done_chunks().tolist() == [True, False, True, True, True, True]


def test_write_casts_like_zarr_and_refuses_a_wrong_shape(tmp_path) -> None:
    store, key = _store(tmp_path)
    writer = store.prepare_embeddings(key, embed_dim=D, chunk_rows=ROWS)
    rows = np.random.default_rng(1).normal(size=(ROWS, D))  # float64 into a float16 store
    writer.write_chunk(0, rows)
    emb = store._features()["enc"]["embeddings"]
    assert np.array_equal(_fastread._read(emb, slice(0, ROWS)), rows.astype(np.float16))
    assert writer._files is not None
    with pytest.raises(ValueError, match="takes 8 rows"):
        _fastread._write_rows(writer._files, 1, rows[:, :-1])


@pytest.mark.parametrize(
    ("shape", "rows", "dtype"),
    [((2000, 1024), 1024, "float16"), ((2,), 1, "uint8"), ((0, 768), 1024, "float32")],
)
def test_array_metadata_made_without_a_store_is_zarrs_own(tmp_path, shape, rows, dtype) -> None:
    """prepare_embeddings writes its group and arrays in one create_hierarchy from metadata built by hand;
    the zarr.json must be byte for byte what zarr's create_array writes for the same array."""
    import zarr

    from slidescope.features.store._fastread import _EVERY_CHUNK, _checksummed, _row_chunked_metadata

    by_zarr = zarr.open_group(str(tmp_path / "a"), mode="w")
    by_zarr.create_array(
        "x",
        shape=shape,
        chunks=(rows, *shape[1:]),
        dtype=dtype,
        compressors=_checksummed(),
        fill_value=0,
        config=_EVERY_CHUNK,
    )
    ours = zarr.open_group(str(tmp_path / "b"), mode="w")
    dict(ours.create_hierarchy({"x": _row_chunked_metadata(shape, rows, dtype)}))
    assert (tmp_path / "b/x/zarr.json").read_bytes() == (tmp_path / "a/x/zarr.json").read_bytes()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_read_equals_the_data_and_raises_the_first_bad_chunk(tmp_path, monkeypatch, threads) -> None:
    """Whole-array reads split the chunks over threads (forced here on a small array): the same array as
    plain zarr reads; with two damaged chunks in different threads' runs, the error names the first."""
    monkeypatch.setattr(_fastread, "_THREADED_BYTES", 0)
    monkeypatch.setattr(_fastread, "_read_threads", lambda n, nbytes: min(threads, n))
    data = _data("float32")
    _write(tmp_path, data)
    (group,) = tmp_path.glob("s.zarr/**/features/enc")
    assert np.array_equal(open_store(tmp_path / "s.zarr").embeddings("enc"), data)
    assert np.array_equal(np.asarray(zarr.open_group(str(group), mode="r")["embeddings"][:]), data)
    for c in (1, 5):  # 6 chunks: with 2 or 3 threads, chunks 1 and 5 are read by different threads
        chunk = group / f"embeddings/c/{c}/0"
        raw = bytearray(chunk.read_bytes())
        raw[0] ^= 0x01
        chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match="chunk 1: stored and computed checksum do not match"):
        open_store(tmp_path / "s.zarr").embeddings("enc")


def test_the_real_read_threads(monkeypatch) -> None:
    assert _fastread._read_threads(100, 1 << 10) == 1  # small: no threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert _fastread._read_threads(100, 1 << 30) == 4
    assert _fastread._read_threads(3, 1 << 30) == 3


def test_nodes_read_directly_are_zarrs_own(tmp_path) -> None:
    """The store reads a local node's zarr.json itself (_layout._child): the node must be what zarr's own
    ``group[name]`` returns: same class, metadata, path and data; KeyError for a missing child."""
    from slidescope.features.store._layout import _child, _has

    data = _data("float16")
    _write(tmp_path, data)
    (where,) = tmp_path.glob("s.zarr/**/features")
    group = zarr.open_group(str(where), mode="r")
    for name in ("enc", "enc/embeddings", "enc/done"):
        ours, theirs = _child(group, name), group[name]
        assert type(ours) is type(theirs)
        assert ours.metadata == theirs.metadata and ours.path == theirs.path
        assert ours.store is theirs.store
    assert np.array_equal(np.asarray(_child(group, "enc/embeddings")[:]), data)
    assert dict(_child(group, "enc").attrs) == dict(group["enc"].attrs)
    with pytest.raises(KeyError):
        _child(group, "other")
    assert _has(group, "enc") and not _has(group, "other")
    (where / "enc/zarr.json").write_text("{not json")
    with pytest.raises(StoreCorruptError, match="cannot be read"):
        open_store(tmp_path / "s.zarr").embeddings("enc")


def test_metadata_written_directly_is_zarrs_own(tmp_path) -> None:
    """In a local store the groups' and arrays' zarr.json are written by _layout itself (one file write, no
    trip through zarr's event loop): byte for byte what zarr's create_hierarchy and update_attributes
    write, and nothing left half-written."""
    from slidescope.features.store._fastread import _group_metadata, _row_chunked_metadata
    from slidescope.features.store._layout import _create_children, _update_attributes

    def nodes():
        return {
            "g": _group_metadata({"complete": False, "n": 3}),
            "g/embeddings": _row_chunked_metadata((3, 8), 2, "float16"),
            "g/done": _row_chunked_metadata((2,), 1, "uint8"),
        }

    by_zarr = zarr.open_group(str(tmp_path / "a"), mode="w")
    made_by_zarr = dict(by_zarr.create_hierarchy(nodes()))
    ours = zarr.open_group(str(tmp_path / "b"), mode="w")
    made = _create_children(ours, nodes())
    made_by_zarr["g"].update_attributes({"complete": True, "finished": "now"})
    _update_attributes(made["g"], {"complete": True, "finished": "now"})
    assert dict(made["g"].attrs) == {"complete": False, "n": 3} | {"complete": True, "finished": "now"}

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "b") == files(tmp_path / "a") and "g/zarr.json" in files(tmp_path / "b")
    for name, node in made.items():  # the nodes handed back are what zarr opens from those files
        assert node.metadata == zarr.open_group(str(tmp_path / "a"), mode="r")[name].metadata
    readonly = zarr.open_group(str(tmp_path / "b"), mode="r")
    with pytest.raises(Exception, match="read.only|read-only"):  # zarr's own refusal, not a silent write
        _update_attributes(readonly["g"], {"x": 1})
