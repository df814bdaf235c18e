"""Run records: atomic writes, schema migration, clear errors for corrupt or unknown records."""

from __future__ import annotations

import json

import pytest

from bench.core.records import SCHEMA_VERSION, RecordError, read_record, upgrade_records, write_json_atomic
from bench.core.stats import bootstrap_mean, paired_comparison


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"schema_version": SCHEMA_VERSION, "b": 1, "a": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert read_record(tmp_path / "r.json")["a"] == [1, 2]
    assert (tmp_path / "r.json").read_text().index('"a"') < (tmp_path / "r.json").read_text().index('"b"')  # sorted


def test_version_1_records_are_migrated(tmp_path):
    old = {"schema_version": 1, "method": "dpo", "config": {"budget": {"unit": "nfe", "limit": 10.0}}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    record = read_record(tmp_path / "old.json")
    assert record["schema_version"] == SCHEMA_VERSION == 3
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
    from bench.core.backbone import Backbone
    from bench.harness.run import _base_cache_key, plan_run
    from bench.harness.suites import get_suite
    from metrics import SCORERS

    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    plan = plan_run(get_suite("toy"), ["dpo"], run_dir=tmp_path / "run", prompts=["a prompt"], set_metrics=[])
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
    from bench.core.records import staged_directory

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


# 8 prompts x 4 images; the prompts differ a lot and their images hardly at all, so a bootstrap over images (what
# schema version 2 stored) gives a far narrower CI than the one over prompts
PROMPTS = [f"prompt {i // 4}" for i in range(32)]
SCORES = [float(i // 4) + 0.01 * (i % 4) for i in range(32)]
BASE = [float(i // 4) + 0.5 * (i % 2) for i in range(32)]


def _v2(method: str, scores: list[float], *, compared: bool) -> dict:
    record = {"schema_version": 2, "kind": "alignment-run", "suite": "s", "method": method, "seed": 0 if compared else None,
              "config": {"eval": {"bootstrap": 300, "seed": 1}, "metrics": ["r"]},
              "scorers": {"r": {"higher_is_better": False}},
              "evaluation": {"prompts": PROMPTS, "seeds": list(range(32)), "scores": {"r": scores}},
              "metrics": {"r": bootstrap_mean(scores, resamples=300, seed=1)}}  # over images
    if compared:
        win, delta = paired_comparison(scores, BASE, higher_is_better=False, resamples=300, seed=1)
        record.update(win_rate_vs_base={"r": win}, delta_vs_base={"r": delta})
    return record


def test_a_version_2_record_reads_back_with_prompt_clustered_aggregates(tmp_path):
    write_json_atomic(tmp_path / "base.json", _v2("base", BASE, compared=False))
    old = _v2("dpo", SCORES, compared=True)
    write_json_atomic(tmp_path / "dpo-10nfe-s0.json", old)
    record = read_record(tmp_path / "dpo-10nfe-s0.json")
    assert record["schema_version"] == 3
    by_prompt = bootstrap_mean(SCORES, groups=PROMPTS, resamples=300, seed=1)  # the record's B and seed
    win, delta = paired_comparison(SCORES, BASE, groups=PROMPTS, higher_is_better=False, resamples=300, seed=1)
    assert record["metrics"] == {"r": by_prompt} and by_prompt["clusters"] == 8
    assert record["win_rate_vs_base"] == {"r": win} and record["delta_vs_base"] == {"r": delta}
    stored = old["metrics"]["r"]
    assert by_prompt["mean"] == pytest.approx(stored["mean"])  # the same mean, a wider interval
    assert by_prompt["ci_high"] - by_prompt["ci_low"] > 1.5 * (stored["ci_high"] - stored["ci_low"])  # about √4
    # lower is better; per prompt p the images score p, p + .01, p + .02, p + .03 against the base's p, p + .5, p,
    # p + .5: tie, win, loss, win -> (0.5 + 1 + 0 + 1) / 4 = 0.625
    assert win["mean"] == pytest.approx(0.625) and delta["mean"] == pytest.approx(sum(SCORES) / 32 - sum(BASE) / 32)
    assert record["previous_aggregates"] == {"schema_version": 2, "metrics": old["metrics"],
                                             "win_rate_vs_base": old["win_rate_vs_base"],
                                             "delta_vs_base": old["delta_vs_base"]}
    assert read_record(tmp_path / "base.json")["metrics"]["r"]["clusters"] == 8
    assert json.loads((tmp_path / "dpo-10nfe-s0.json").read_text())["schema_version"] == 2  # reading changes nothing


def test_a_version_2_comparison_without_its_base_is_named(tmp_path):
    write_json_atomic(tmp_path / "dpo-10nfe-s0.json", _v2("dpo", SCORES, compared=True))
    with pytest.raises(RecordError, match="dpo-10nfe-s0.json \\(schema version 2\\) compares with the base model.*"
                                          "no base record of suite 's'"):
        read_record(tmp_path / "dpo-10nfe-s0.json")
    other = _v2("base", BASE, compared=False)
    other["evaluation"]["seeds"] = list(range(1, 33))  # another evaluation set is no base for it
    write_json_atomic(tmp_path / "base.json", other)
    with pytest.raises(RecordError, match="evaluated on the same prompts and seeds"):
        read_record(tmp_path / "dpo-10nfe-s0.json")


def test_upgrade_rewrites_old_records_in_place_and_nothing_else(tmp_path):
    runs = tmp_path / "runs" / "toy"
    write_json_atomic(runs / "base.json", _v2("base", BASE, compared=False))
    write_json_atomic(runs / "dpo-10nfe-s0.json", _v2("dpo", SCORES, compared=True))
    write_json_atomic(runs / "run.json", {"schema_version": 2, "config": {}})  # a run manifest, not a record
    (runs / "table.md").write_text("| a table |")
    (runs / "broken.json").write_text("{")
    before = {p.name: p.read_bytes() for p in runs.iterdir()}
    expected = {name: read_record(runs / name) for name in ("base.json", "dpo-10nfe-s0.json")}
    assert upgrade_records(tmp_path / "runs") == [runs / "base.json", runs / "dpo-10nfe-s0.json"]
    for name, record in expected.items():
        assert json.loads((runs / name).read_text()) == json.loads(json.dumps(record))  # as read, now on disk
        assert read_record(runs / name) == json.loads(json.dumps(record))
    assert {p.name: p.read_bytes() for p in runs.iterdir() if p.name not in expected} == {
        name: data for name, data in before.items() if name not in expected}  # no temporary files, others untouched
    assert upgrade_records(tmp_path / "runs") == []  # already current


def test_every_record_kind_is_built_and_read_through_one_module(tmp_path):
    """`new_record` stamps kind, version, environment and time and refuses a record missing a required field;
    `read_record` migrates a kind's unversioned files (the first `invert.json`s) and names a kind mismatch."""
    from bench.core.records import ALIGNMENT_RUN, INVERT, KINDS, TUNING, RecordError, new_record, read_record

    assert len(KINDS) == 7 and all(name == kind.name for name, kind in KINDS.items())
    record = new_record(INVERT, config={"steps": 10}, records=[])
    assert (record["kind"], record["schema_version"]) == ("invert", 1)
    assert {"commit", "dirty"} <= set(record["environment"]["git"]) and record["created"].endswith("+00:00")
    with pytest.raises(ValueError, match="a tuning record needs budget, methods, objective, trials"):
        new_record(TUNING, suite="toy")

    legacy = tmp_path / "invert.json"  # as `bench invert` wrote it before records had kinds
    legacy.write_text(json.dumps({"config": {"steps": 10}, "records": [], "pipeline": "toy"}))
    assert read_record(legacy, INVERT) == {"config": {"steps": 10}, "records": [], "pipeline": "toy",
                                           "schema_version": 1, "kind": "invert"}
    with pytest.raises(RecordError, match="kinded.json is a 'invert' record, not 'alignment-run'"):
        read_record(_written(tmp_path / "kinded.json", record), ALIGNMENT_RUN)
    future = _written(tmp_path / "future.json", {**record, "schema_version": 9})
    with pytest.raises(RecordError, match="invert record .*future.json has schema version 9; this version reads \\[1\\]"):
        read_record(future)


def _written(path, payload):
    path.write_text(json.dumps(payload))
    return path


def test_run_manifest_and_dry_run_report_are_records(tmp_path):
    from bench.core.records import RUN_MANIFEST, read_record
    from bench.harness.dryrun import DryRunReport

    old_manifest = _written(tmp_path / "run.json", {"schema_version": 2, "config": {"suite": "toy"}})
    assert read_record(old_manifest, RUN_MANIFEST)["config"] == {"suite": "toy"}
    report = DryRunReport("toy", "p", "built-in", "sd15", 1, (4, 8, 8), [], [], None, []).to_dict()
    assert (report["kind"], report["schema_version"], report["suite"]) == ("dry-run", 1, "toy")


def test_the_toy_suites_base_evaluation_is_shipped_with_the_build(monkeypatch, tmp_path):
    """A first `bench run` on the toy suite (empty cache) takes the base model's evaluation from the shipped toy build
    (`bench/toy/assets/base/`, keyed like the cache) instead of sampling 256 images again."""
    from bench.core.backbone import Backbone
    from bench.harness import run as run_module
    from bench.harness.evaluation import SetEvaluation
    from bench.harness.suites import get_suite
    from bench.toy.paths import SHIPPED_TOY_DIR
    from metrics.build import build_scorers

    monkeypatch.delenv("BENCH_TOY_DIR", raising=False)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "empty-cache"))

    def no_sampling(*args, **kwargs):
        raise AssertionError("the base model was evaluated again")

    monkeypatch.setattr(run_module, "evaluate", no_sampling)
    suite = get_suite("toy")
    plan = run_module.plan_run(suite, ["dpo"], run_dir=tmp_path / "run", progress=False)
    scorers = build_scorers(list(suite.metrics), plan.scorer_options)
    backbone = Backbone.from_pretrained(plan.pipeline)
    sets = SetEvaluation.build(plan.set_metrics, suite.reference)
    record = run_module.base_record(backbone, plan, scorers, sets)
    key = run_module._base_cache_key(backbone, plan, scorers, sets)
    (features,) = sets.backbones.values()  # the toy CLIP's weights found elsewhere (another clone): the same key
    described = features.describe()
    moved = {**described, "weights": [{**w, "path": "/elsewhere/" + w["file"]} for w in described["weights"]]}
    monkeypatch.setattr(features, "describe", lambda: moved)
    assert run_module._base_cache_key(backbone, plan, scorers, sets) == key
    shipped = read_record(SHIPPED_TOY_DIR / "base" / f"{key}.json")
    assert record["evaluation"]["scores"] == shipped["evaluation"]["scores"]
    assert record["set_metrics"] == shipped["set_metrics"] and set(record["set_metrics"]) == set(suite.set_metrics)
    assert len(shipped["evaluation"]["scores"]["oracle"]) == 256
    assert record["config"] == plan.config() and not (tmp_path / "empty-cache" / "base").exists()


def test_the_environment_names_the_cpu_model(monkeypatch, tmp_path):
    """Records carry the CPU's model next to the thread count (multi-threaded results differ between CPU models):
    /proc/cpuinfo's first "model name" on Linux, else `platform.processor()`, else None."""
    import builtins
    import platform

    from bench.core import records

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n"
                       "model name\t: AMD EPYC 7B13\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                           *a, **k))
    assert records.environment()["hardware"]["cpu"] == "AMD EPYC 7B13"
    cpuinfo.unlink()  # no /proc/cpuinfo (macOS, Windows): the platform's own name, or None
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert records.cpu_model() == "arm"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert records.cpu_model() is None
