"""One configuration path for every plugin: a method's, sampler's or scorer's options reach its typed Config
through one parser (`--method-arg`, `--sampler-arg`, `--metric-arg NAME.FIELD=VALUE`), fail alike on a typo,
land in the records, and `bench list NAME` prints them; the deprecated scorer flags map onto `--metric-arg`, and
run directories started before scorers had Configs resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.core.config import OverrideError, TrainConfig, parse_plugin_args, parse_plugin_configs
from bench.core.records import RUN_MANIFEST, new_record
from bench.harness.invert import InvertConfig
from bench.harness.run import RunSetupError, plan_run
from bench.harness.suites import get_suite
from methods.alignment import METHODS
from methods.inversion import SAMPLERS
from methods.inversion.base import sampling_levels
from methods.inversion.bdia import BDIAConfig
from metrics import SCORERS
from metrics.build import ScorerOptions, build_scorers
from metrics.hps import HPSConfig
from metrics.toy_clip import ToyClipScorer

runner = CliRunner()
PROMPT = "a small red circle on the left, black background"


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch, tiny_toy_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    return tmp_path


def _help(config_cls, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(config_cls) if f.name == name)


# ----------------------------------------------------------------------------------------------- the parser

SAMPLER_CONFIGS = {"bdia": SAMPLERS.get("bdia").Config, "edict": SAMPLERS.get("edict").Config}


def test_the_parser_types_values_by_field():
    given = parse_plugin_args(["bdia.gamma=0.5", "edict.leapfrog=false", "edict.p=1"], "--sampler-arg", SAMPLER_CONFIGS,
                              kind="sampler", where="--samplers")
    assert given == {"bdia": {"gamma": 0.5}, "edict": {"leapfrog": False, "p": 1.0}}
    # --train-arg: a bare FIELD=VALUE is for every method; a deprecated method name stands for its current one
    train = parse_plugin_args(["lr=1e-5", "dense-dpo.batch_size=8"], "--train-arg",
                              {"*": TrainConfig, "dpo-gamma-t": TrainConfig}, kind="method", where="--methods", bare="*",
                              canonical=METHODS.canonical)
    assert train == {"*": {"lr": 1e-5}, "dpo-gamma-t": {"batch_size": 8}}


@pytest.mark.parametrize("item, message", [
    ("bdia", "--sampler-arg 'bdia': expected SAMPLER.FIELD=VALUE"),
    ("bdai.gamma=0.5", "--sampler-arg bdai.gamma=0.5: sampler 'bdai' is not in --samplers (bdia, edict); did you mean "
                       "'bdia'?"),
    ("ddim.eval_at=source", "sampler 'ddim' is not in --samplers (bdia, edict)"),
    ("bdia.gama=0.5", "--sampler-arg bdia.gama=0.5: BDIAConfig has no field 'gama'; did you mean 'gamma'? (fields: gamma)"),
    ("bdia.gamma=high", "--sampler-arg bdia.gamma: expected float, got 'high'"),
    ("edict.leapfrog=maybe", "--sampler-arg edict.leapfrog: expected a boolean, got 'maybe'"),
])
def test_the_parser_names_what_is_wrong_in_one_line(item, message):
    with pytest.raises(OverrideError) as err:
        parse_plugin_args([item], "--sampler-arg", SAMPLER_CONFIGS, kind="sampler", where="--samplers")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parsed_configs_are_validated_by_the_plugins_own_rules():
    configs = parse_plugin_configs(["bdia.gamma=0.5"], "--sampler-arg", SAMPLERS, ["bdia", "ddim"], where="--samplers")
    assert configs == {"bdia": BDIAConfig(gamma=0.5), "ddim": SAMPLERS.get("ddim").Config()}  # every name, resolved
    with pytest.raises(OverrideError, match=r"^--sampler-arg bdia: gamma must be >= 0 \(0 is DDIM\), got -1.0$"):
        parse_plugin_configs(["bdia.gamma=-1"], "--sampler-arg", SAMPLERS, ["bdia"], where="--samplers")


@pytest.mark.parametrize("registry", [SAMPLERS, SCORERS], ids=lambda r: r.kind)
def test_every_sampler_and_scorer_has_a_frozen_config_with_help(registry):
    for name, cls in registry.items():
        assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen, name
        for f in dataclasses.fields(cls.Config):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"
        if registry is SAMPLERS:
            assert cls().config == cls.Config(), name  # cls() is the defaults


# ----------------------------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("args, message", [
    (["invert", "--samplers", "bdia", "--sampler-arg", "bdai.gamma=0.5"],
     "--sampler-arg bdai.gamma=0.5: sampler 'bdai' is not in --samplers (bdia); did you mean 'bdia'?"),
    (["invert", "--samplers", "bdia", "--sampler-arg", "bdia.gama=0.5"],
     "BDIAConfig has no field 'gama'; did you mean 'gamma'?"),
    (["invert", "--samplers", "bdia", "--sampler-arg", "bdia.gamma=high"], "--sampler-arg bdia.gamma: expected float, "
                                                                           "got 'high'"),
    (["invert", "--samplers", "bdia", "--sampler-arg", "bdia.gamma=-1"], "--sampler-arg bdia: gamma must be >= 0"),
    (["run", "--methods", "dpo", "--method-arg", "dop.beta=3"],
     "--method-arg dop.beta=3: method 'dop' is not in --methods (dpo); did you mean 'dpo'?"),
    (["run", "--methods", "dpo", "--method-arg", "dpo.betta=3"], "DPOConfig has no field 'betta'; did you mean 'beta'?"),
    (["run", "--methods", "dpo", "--method-arg", "dpo.beta=high"], "--method-arg dpo.beta: expected float, got 'high'"),
    (["run", "--methods", "dpo", "--train-arg", "lrr=1e-5"], "--train-arg lrr=1e-5: TrainConfig has no field 'lrr'; "
                                                             "did you mean 'lr'?"),
    (["run", "--methods", "inpo", "--method-arg", "inpo.inversion=bdia", "--method-arg", "inpo.inversion_args=gama=0.5"],
     "inpo: inversion_args of bdia: BDIAConfig has no field 'gama'; did you mean 'gamma'?"),
    (["run", "--methods", "dpo", "--metric-arg", "toy-clip.batch_sise=3"],
     "--metric-arg toy-clip.batch_sise=3: ToyScorerConfig has no field 'batch_sise'; did you mean 'batch_size'?"),
    (["run", "--methods", "dpo", "--metric-arg", "toy-clip.batch_size=many"],
     "--metric-arg toy-clip.batch_size: expected int, got 'many'"),
    (["eval", "--metrics", "toy-clip", "--toy-renders", "2", "--metric-arg", "toy-clipp.batch_size=1"],
     "--metric-arg toy-clipp.batch_size=1: metric 'toy-clipp' is not in --metrics (toy-clip); did you mean 'toy-clip'?"),
    (["eval", "--metrics", "toy-clip", "--toy-renders", "2", "--metric-arg", "toy-clip.batch_size=0"],
     "--metric-arg toy-clip: batch_size must be >= 1, got 0"),
])
def test_a_bad_plugin_option_exits_2_in_one_line_and_writes_nothing(in_tmp, args, message):
    result = runner.invoke(app, [*args, *(["--out", "inv"] if args[0] == "invert" else [])])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1
    assert list(in_tmp.iterdir()) == []


def test_a_sampler_arg_reaches_the_sampler_and_the_record(in_tmp, tiny_toy_dir, tiny_backbone):
    result = runner.invoke(app, ["invert", "--samplers", "bdia,renoise", "--sampler-arg", "bdia.gamma=0.5",
                                 "--sampler-arg", "renoise.iterations=3", "--steps", "4", "--images", "2",
                                 "--pipeline", str(tiny_toy_dir / "pipeline"), "--out", "inv", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((in_tmp / "inv" / "invert.json").read_text())
    assert data["config"]["sampler_configs"] == {"bdia": {"gamma": 0.5}, "renoise": {"iterations": 3, "average": 2}}
    renoise = next(r for r in data["records"] if r["sampler"] == "renoise")
    assert renoise["nfe_invert"] == 4 * (3 + 1)  # K + 1 model calls per inversion step

    # γ changes BDIA's inversion (the same images and path, the state differs)
    cfg = InvertConfig(samplers=("bdia",), sampler_configs={"bdia": BDIAConfig(gamma=0.5)})
    assert cfg.sampler("bdia").config.gamma == 0.5
    cond = tiny_backbone.encode_prompts([PROMPT])
    x0 = torch.randn((1, *tiny_backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    levels = sampling_levels(tiny_backbone, 4)
    default, half = (sampler.invert(tiny_backbone, x0, cond, levels).latents
                     for sampler in (SAMPLERS.get("bdia")(), cfg.sampler("bdia")))
    assert (default - half).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match=r"a Config for sampler 'edict', which is not in --samplers \(bdia\)"):
        InvertConfig(samplers=("bdia",), sampler_configs={"edict": SAMPLERS.get("edict").Config()})


def test_inpo_builds_its_inverter_from_its_config(in_tmp):
    plan = plan_run(get_suite("toy"), ["inpo"], run_dir=in_tmp / "run",
                    method_args={"inpo": {"inversion": "bdia", "inversion_args": "gamma=0.5"}})
    assert plan.methods["inpo"].inverter.config == BDIAConfig(gamma=0.5)
    described = plan.config()["methods"]["inpo"]["config"]
    assert described["inversion_args"] == {"gamma": 0.5} and described["mode"] == "exact"
    faithful = plan_run(get_suite("toy"), ["inpo"], run_dir=in_tmp / "run").config()["methods"]["inpo"]["config"]
    assert faithful["inversion_args"] == {"eval_at": "source", "noise_scale": 0.1}  # the official DDIM settings
    with pytest.raises(RunSetupError, match="inversion_args configures the inverter of mode=exact"):
        plan_run(get_suite("toy"), ["inpo"], run_dir=in_tmp / "run", method_args={"inpo": {"inversion_args": "p=1"}})


def test_a_metric_arg_reaches_the_scorer_and_the_records(in_tmp, monkeypatch):
    built = build_scorers(["toy-clip"], ScorerOptions(configs=parse_plugin_configs(
        ["toy-clip.batch_size=3"], "--metric-arg", SCORERS, ["toy-clip"], where="--metrics")))
    assert built["toy-clip"].config.batch_size == 3

    used = []
    score = ToyClipScorer.score
    monkeypatch.setattr(ToyClipScorer, "score", lambda self, prompts, images: (used.append(self.config.batch_size),
                                                                               score(self, prompts, images))[1])
    (in_tmp / "p.txt").write_text(PROMPT + "\n")
    result = runner.invoke(app, ["run", "--methods", "sft", "--budget", "2steps", "--prompts", "p.txt", "--run-dir", "out",
                                 "--metric-arg", "toy-clip.batch_size=7", "--set-metrics", "", "-q"])
    assert result.exit_code == 0, result.output
    assert used and set(used) == {7}
    for name in ("run.json", "base.json", "sft-2steps-s0.json"):
        config = json.loads((in_tmp / "out" / name).read_text())["config"]
        assert config["scorer_configs"] == {"oracle": {}, "toy-pickscore": {"batch_size": 256},
                                            "toy-clip": {"batch_size": 7}}, name
        assert config["scorer_options"] == {"weights_given_for": []}

    result = runner.invoke(app, ["eval", "--metrics", "oracle,toy-clip", "--toy-renders", "2", "--metric-arg",
                                 "toy-clip.batch_size=1", "--json", "s.json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((in_tmp / "s.json").read_text())["scorer_configs"] == {"oracle": {}, "toy-clip": {"batch_size": 1}}


@pytest.mark.parametrize("flag, value, item, reached", [
    ("--hps-version", "v2.0", "hps.version=v2.0", "HPS_v2_compressed.pt"),  # the v2.0 checkpoint is looked for
    ("--clip-backbone", "ViT-B-32", "clip.backbone=ViT-B-32", "open_clip backbone 'ViT-B-32' needs a pretrained tag"),
])
def test_deprecated_scorer_flags_say_what_replaces_them_and_still_work(in_tmp, monkeypatch, flag, value, item, reached):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(in_tmp / "empty-hub-cache"))
    metric = item.split(".")[0]
    result = runner.invoke(app, ["eval", "--metrics", metric, "--toy-renders", "2", flag, value])
    assert result.exit_code == 2, result.output  # no weights here: the mapped option reached the scorer
    notice, error = result.output.strip().split("\n", 1)
    assert notice == f"deprecated: {flag} is replaced by --metric-arg {item} and will be removed in the next release"
    assert reached in " ".join(error.split())


# ----------------------------------------------------------------------------------------------- bench list NAME


@pytest.mark.parametrize("name, config_cls, field_name, extra", [
    ("dpo", METHODS.get("dpo").Config, "beta", "beta: float = 5000.0 (bench tune searches [10, 20000] log)"),
    ("bdia", BDIAConfig, "gamma", "set with: bench invert --sampler-arg bdia.FIELD=VALUE"),
    ("hps", HPSConfig, "version", "version: str = 'v2.1'"),
])
def test_list_name_prints_the_fields_with_their_help(name, config_cls, field_name, extra):
    result = runner.invoke(app, ["list", name])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert " ".join(_help(config_cls, field_name).split()) in text and extra in text
    assert all(f"{f.name}: " in text for f in dataclasses.fields(config_cls))


def test_list_of_an_unknown_name_suggests_the_nearest():
    result = runner.invoke(app, ["list", "bdai"])
    assert result.exit_code == 2 and "unknown plugin 'bdai'; did you mean 'bdia'?" in result.output
    result = runner.invoke(app, ["list", "toy-flw"])
    assert result.exit_code == 2 and "did you mean 'toy-flow'?" in result.output


def test_list_suite_shows_what_its_runs_use():
    """`bench list toy-flow`: the suite's budget, evaluation and each method's settings with where they were tuned
    (this pipeline's own tuning run, or the SD toy's for a method it did not tune); methods that cannot train on its
    flow schedule are named apart, not listed with settings."""
    suite = get_suite("toy-flow")
    result = runner.invoke(app, ["list", "toy-flow"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    dpo, mapo = suite.method_args["dpo"], suite.method_args["mapo"]
    assert (f"dpo: beta={dpo['beta']:.3g}, train.lr={suite.train_args['dpo']['lr']:.3g} [tuned on toy-flow, 8 trials "
            "of 40000nfe]") in lines
    assert any(line.startswith(f"mapo: beta={mapo['beta']:.3g}, gamma={mapo['gamma']:.3g}, ") and "[tuned on toy, "
               in line for line in lines)
    vp_only = sorted(name for name, cls in METHODS.items() if cls.schedules == ("vp",))
    assert vp_only and f"not for this pipeline's flow schedule: {', '.join(vp_only)}" in lines
    assert "budget per method: 40000nfe; dtype fp32" in lines and "test prompts (reported): 64 prompts" in lines
    real = " ".join(runner.invoke(app, ["list", "sd15-pickapic"]).output.split())
    assert "test prompts (reported): column 'caption' of yuvalkirstain/pickapic_v2 (test_unique split)" in real


# ----------------------------------------------------------------------------------------------- old run directories


def _write_manifest(run_dir, config: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(new_record(RUN_MANIFEST, config=config)))


def test_a_run_started_before_scorer_configs_resumes(in_tmp):
    """run.json written before this change: `scorer_options` {hps_version, clip_backbone, weights_given_for}, no
    `scorer_configs`, and InPO's config without `inversion_args`."""
    suite, bdia = get_suite("toy"), {"inpo": {"inversion": "bdia"}}
    config = json.loads(json.dumps(plan_run(suite, ["dpo", "inpo"], run_dir=in_tmp / "new", method_args=bdia).config()))
    del config["scorer_configs"], config["methods"]["inpo"]["config"]["inversion_args"]
    config["scorer_options"] = {"hps_version": None, "clip_backbone": None, "weights_given_for": []}
    _write_manifest(in_tmp / "old", config)
    plan_run(suite, ["dpo", "inpo"], run_dir=in_tmp / "old", resume=True, method_args=bdia)  # resumes
    for method_args, scorer_configs, changed in (
            ({"inpo": {**bdia["inpo"], "inversion_args": "gamma=0.5"}}, {}, "methods"),  # not with another inverter,
            (bdia, {"toy-clip": SCORERS.get("toy-clip").Config(batch_size=8)}, "scorer_configs")):  # nor other scorers
        with pytest.raises(RunSetupError, match=rf"different configuration \({changed}\)"):
            plan_run(suite, ["dpo", "inpo"], run_dir=in_tmp / "old", resume=True, method_args=method_args,
                     scorer_options=ScorerOptions(configs=scorer_configs))


def test_an_old_hps_version_resumes_as_the_hps_config(in_tmp):
    suite = get_suite("sd15-pickapic")
    v20 = ScorerOptions(configs={"hps": HPSConfig(version="v2.0")})
    config = json.loads(json.dumps(plan_run(suite, ["dpo"], run_dir=in_tmp / "new", prompts=["a cat"],
                                            scorer_options=v20).config()))
    assert config["scorer_configs"]["hps"] == {"version": "v2.0", "batch_size": 16}
    del config["scorer_configs"]
    config["scorer_options"] = {"hps_version": "v2.0", "clip_backbone": None, "weights_given_for": []}
    _write_manifest(in_tmp / "old", config)
    plan_run(suite, ["dpo"], run_dir=in_tmp / "old", resume=True, prompts=["a cat"], scorer_options=v20)
    with pytest.raises(RunSetupError, match=r"different configuration \(scorer_configs\)"):
        plan_run(suite, ["dpo"], run_dir=in_tmp / "old", resume=True, prompts=["a cat"])  # HPS v2.1 now
