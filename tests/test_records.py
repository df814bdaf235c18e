"""Run records: atomic writes, schema migration, clear errors for corrupt or unknown records."""

from __future__ import annotations

import json

import pytest

from bench.records import SCHEMA_VERSION, RecordError, read_record, write_json_atomic


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"schema_version": SCHEMA_VERSION, "b": 1, "a": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert read_record(tmp_path / "r.json")["a"] == [1, 2]
    assert (tmp_path / "r.json").read_text().index('"a"') < (tmp_path / "r.json").read_text().index('"b"')  # sorted


def test_version_1_records_are_migrated(tmp_path):
    old = {"schema_version": 1, "method": "dpo", "config": {"budget": {"unit": "nfe", "limit": 10.0}}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    record = read_record(tmp_path / "old.json")
    assert record["schema_version"] == SCHEMA_VERSION == 2
    assert record["config"]["budgets"] == [{"unit": "nfe", "limit": 10.0}] and record["samples"]["png_base64"] == []


def test_unknown_versions_missing_and_corrupt_records_are_named(tmp_path):
    (tmp_path / "future.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(RecordError, match="future.json has schema version 99"):
        read_record(tmp_path / "future.json")
    with pytest.raises(RecordError, match="missing.json does not exist"):
        read_record(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RecordError, match="bad.json is corrupt"):
        read_record(tmp_path / "bad.json")


def test_base_cache_key_follows_the_scorers_weights_not_their_paths(tiny_toy_dir, tmp_path, monkeypatch):
    """A cached base evaluation is reused only with the same scorers: other weights (SHA256), HPS version or CLIP
    backbone give another key; the same weights found at another path give the same key."""
    from bench.backbone import Backbone
    from bench.run import _base_cache_key, plan_run
    from bench.suites import get_suite
    from metrics import SCORERS

    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    plan = plan_run(get_suite("toy"), ["dpo"], run_dir=tmp_path / "run", prompts=["a prompt"])
    backbone = Backbone.from_pretrained(tiny_toy_dir / "pipeline")
    scorer = SCORERS.get("toy-clip")()
    described = scorer.describe()
    key = _base_cache_key(backbone, plan, {"toy-clip": scorer})

    def with_weights(**changes):
        monkeypatch.setattr(scorer, "describe", lambda: {**described, "weights": [{**described["weights"][0], **changes}]})
        return _base_cache_key(backbone, plan, {"toy-clip": scorer})

    assert with_weights(path="/elsewhere/toy-clip.safetensors") == key
    assert with_weights(sha256="0" * 64) != key
    monkeypatch.setattr(scorer, "describe", lambda: {**described, "version": "v2.0"})
    assert _base_cache_key(backbone, plan, {"toy-clip": scorer}) != key


def test_staged_directory_replaces_entries_together_or_not_at_all(tmp_path):
    from bench.records import staged_directory

    out = tmp_path / "build"
    (out / "pipeline").mkdir(parents=True)
    (out / "pipeline" / "old.bin").write_text("old")
    (out / "build.json").write_text("old")
    (out / "keep.txt").write_text("untouched")
    with pytest.raises(RuntimeError), staged_directory(out) as stage:
        (stage / "pipeline").mkdir()
        (stage / "build.json").write_text("new")
        raise RuntimeError("killed half-way")
    assert (out / "pipeline" / "old.bin").exists() and (out / "build.json").read_text() == "old"
    with staged_directory(out) as stage:
        (stage / "pipeline").mkdir()
        (stage / "pipeline" / "new.bin").write_text("new")
        (stage / "build.json").write_text("new")
    assert sorted(p.name for p in (out / "pipeline").iterdir()) == ["new.bin"]
    assert (out / "build.json").read_text() == "new" and (out / "keep.txt").read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "keep.txt", "pipeline"]  # no staging or old copies
    (out / ".staging-999999999").mkdir()  # left by a killed build (no such process)
    with staged_directory(out) as stage:
        (stage / "build.json").write_text("newer")
    assert not (out / ".staging-999999999").exists() and (out / "build.json").read_text() == "newer"


def test_a_json_array_is_not_a_record(tmp_path):
    (tmp_path / "list.json").write_text('["a", "b"]')
    with pytest.raises(RecordError, match="list.json is not a JSON object"):
        read_record(tmp_path / "list.json")
