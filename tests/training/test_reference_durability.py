"""The reference cache survives SIGKILL, detects corruption, and changes key with what its numbers depend on."""

from __future__ import annotations

import json

import pytest
from tests.fixtures.dpo_support import build_cache, kill_when, load, make_pairs, start_script

from faithforge.core.errors import UserError
from faithforge.training.reference_cache import ReferenceCache, cache_key, weights_fingerprint

PAIRS = 10  # teacher examples → about 15 pairs, 4 shards of 4


def test_sigkill_mid_run_resumes_with_remaining_shards_only(tiny_model_dir, tmp_path):
    pairs = make_pairs(PAIRS)
    marker = tmp_path / "first-shard-written"
    child = start_script(
        "import time\n"
        "from pathlib import Path\n"
        "from tests.fixtures.dpo_support import build_cache, make_pairs\n"
        "def on_shard(done, total):\n"
        f"    Path({str(marker)!r}).write_text(str(done))\n"
        "    time.sleep(300)\n"
        f"build_cache({str(tiny_model_dir)!r}, make_pairs({PAIRS}), {str(tmp_path / 'killed')!r}, on_shard=on_shard)\n",
        marker)
    kill_when(child, marker)

    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 1
    first = tmp_path / "killed" / manifest["shards"][0]["file"]
    before = (first.stat().st_ino, first.stat().st_mtime_ns)

    resumed, summary = build_cache(tiny_model_dir, pairs, tmp_path / "killed")
    assert summary["resumed_from_shard"] == 1
    assert summary["computed_pairs"] == len(pairs) - 4
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == before, "a verified shard must not be rewritten"

    uninterrupted, _ = build_cache(tiny_model_dir, pairs, tmp_path / "clean")
    assert resumed.load() == uninterrupted.load()
    assert len(resumed.load()) == len(pairs)


def _flip_byte(path, offset: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shard_is_detected_never_used_and_recomputed(tiny_model_dir, tmp_path):
    pairs = make_pairs(PAIRS)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache")
    good = cache.load()
    _flip_byte(tmp_path / "cache" / "shard-00001.parquet")

    assert not cache.is_complete()
    with pytest.raises(UserError, match="shard-00001.parquet does not match its checksum"):
        cache.load()

    again, summary = build_cache(tiny_model_dir, pairs, tmp_path / "cache")
    assert summary["resumed_from_shard"] == 1 and not summary["reused"]
    assert again.load() == good


def test_truncated_manifest_recomputes_everything(tiny_model_dir, tmp_path):
    pairs = make_pairs(4)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache")
    good = cache.load()
    manifest = tmp_path / "cache" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(UserError, match="incomplete"):
        cache.load()
    again, summary = build_cache(tiny_model_dir, pairs, tmp_path / "cache")
    assert summary["resumed_from_shard"] == 0 and summary["computed_pairs"] == len(pairs)
    assert again.load() == good


def test_key_changes_with_tokenizer_template_length_truncation_quantization_pairs_and_weights(tiny_model_dir, tmp_path):
    from faithforge.training.tiny_model import build_tiny_model

    pairs = make_pairs(3)
    _, tokenizer = load(tiny_model_dir)
    weights = weights_fingerprint(tiny_model_dir)
    base = dict(weights=weights, tokenizer=tokenizer, max_length=64, truncation_mode="keep_start", quantization=None,
                pairs=pairs)
    key, _ = cache_key(**base)
    assert cache_key(**base)[0] == key  # deterministic

    _, other_tokenizer = load(tiny_model_dir)
    other_tokenizer.add_tokens(["Zanzibar"])
    _, templated = load(tiny_model_dir)
    templated.chat_template = templated.chat_template.replace("<system> ", "<system>  ")
    other_model = build_tiny_model(tmp_path / "other", seed=1)
    variants = {
        "tokenizer": {**base, "tokenizer": other_tokenizer},
        "chat template": {**base, "tokenizer": templated},
        "max_length": {**base, "max_length": 65},
        "no max_length": {**base, "max_length": None},
        "truncation": {**base, "truncation_mode": "keep_end"},
        "quantization": {**base, "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
        "pairs": {**base, "pairs": pairs[:-1]},
        "pair content": {**base, "pairs": [*pairs[:-1], {**pairs[-1], "chosen": [{"role": "assistant", "content": "x"}]}]},
        "weights": {**base, "weights": weights_fingerprint(other_model)},
    }
    keys = {name: cache_key(**kwargs)[0] for name, kwargs in variants.items()}
    assert key not in keys.values()
    assert len(set(keys.values())) == len(keys), keys


def test_cache_directory_of_another_key_is_not_loaded(tiny_model_dir, tmp_path):
    pairs = make_pairs(3)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", max_length=64)
    _, tokenizer = load(tiny_model_dir)
    key, components = cache_key(weights=weights_fingerprint(tiny_model_dir), tokenizer=tokenizer, max_length=32,
                                truncation_mode="keep_start", quantization=None, pairs=pairs)
    assert key != cache.key
    stale = ReferenceCache(tmp_path / "cache", key, components, cache.shard_size)
    assert not stale.is_complete()
    with pytest.raises(UserError, match="another key"):
        stale.load()
