"""storage.publish_dir / fetch_dir over file:// and memory:// URLs: verified, atomic on the local side."""

from __future__ import annotations

import uuid

import fsspec
import pytest
from tests.fixtures.dpo_support import build_cache, make_pairs

from faithforge.core.errors import UserError
from faithforge.training.reference_cache import ReferenceCache
from faithforge.offload.storage import INDEX, fetch_dir, publish_dir, read_index
from faithforge.core.workspace import sha256_tree


@pytest.fixture(scope="module")
def cache_dir(tiny_model_dir, tmp_path_factory):
    cache, _ = build_cache(tiny_model_dir, make_pairs(5), tmp_path_factory.mktemp("worker") / "refcache")
    return cache


def _urls(tmp_path):
    return [(tmp_path / "bucket" / "refcache").as_uri(), f"memory://faithforge-{uuid.uuid4().hex}/refcache"]


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_reference_cache_computed_on_one_machine_is_consumed_on_another(cache_dir, tmp_path, kind):
    url = _urls(tmp_path)[kind == "memory"]
    index = publish_dir(cache_dir.directory, url)
    assert {e["path"] for e in index["files"]} >= {"manifest.json", "shard-00000.parquet"}

    local = tmp_path / "trainer" / "refcache"
    assert fetch_dir(url, local) == local
    assert sha256_tree(local) == sha256_tree(cache_dir.directory)
    consumed = ReferenceCache(local, cache_dir.key, cache_dir.components, cache_dir.shard_size)
    assert consumed.is_complete() and consumed.load() == cache_dir.load()


def test_corrupt_remote_file_is_refused_and_local_copy_kept(cache_dir, tmp_path):
    url = _urls(tmp_path)[1]
    publish_dir(cache_dir.directory, url)
    local = tmp_path / "local"
    fetch_dir(url, local)
    before = sha256_tree(local)

    fs = fsspec.filesystem("memory")
    remote_shard = url.split("://", 1)[1] + "/shard-00000.parquet"
    data = bytearray(fs.cat_file(remote_shard))
    data[10] ^= 0xFF
    fs.pipe_file(remote_shard, bytes(data))
    (local / "manifest.json").write_text("{}")  # force a re-download
    changed = sha256_tree(local)
    with pytest.raises(UserError, match="shard-00000.parquet does not match the published checksum"):
        fetch_dir(url, local)
    assert sha256_tree(local) == changed != before
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".local.")], "temporary copy left behind"


def test_unpublished_or_interrupted_publication_is_not_fetched(tmp_path):
    url = (tmp_path / "nothing").as_uri()
    with pytest.raises(UserError, match="nothing is published"):
        fetch_dir(url, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("one")
    publish_dir(source, url)
    fs = fsspec.filesystem("file")
    fs.rm(str(tmp_path / "nothing" / INDEX))  # as if the publisher died before the commit point
    with pytest.raises(UserError, match="nothing is published"):
        read_index(url)


def test_republish_replaces_and_fetch_skips_a_matching_copy(tmp_path):
    url = f"memory://faithforge-{uuid.uuid4().hex}/dir"
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("one")
    publish_dir(source, url)
    local = fetch_dir(url, tmp_path / "local")
    marker = (local / "a.txt").stat().st_mtime_ns
    fetch_dir(url, local)
    assert (local / "a.txt").stat().st_mtime_ns == marker, "a matching copy must not be downloaded again"

    (source / "a.txt").write_text("two")
    (source / "b.txt").write_text("new")
    publish_dir(source, url)
    fetch_dir(url, local)
    assert (local / "a.txt").read_text() == "two" and (local / "b.txt").read_text() == "new"


def test_publish_rejects_missing_or_empty_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        publish_dir(tmp_path / "missing", (tmp_path / "x").as_uri())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        publish_dir(tmp_path / "empty", (tmp_path / "x").as_uri())
