"""What every registered plugin promises, checked over the registries themselves: a method, sampler or scorer
file dropped into its folder is discovered (`Registry.discover`) and from then on meets these tests, with no
list to extend. Facts that only hold for one plugin (hand-computed values) stay in that plugin's tests.

- discovery: every plugin module registers something; a new module in a package is picked up.
- declaration: a plugin class's keywords (`name=`, `config=`, ...) set its attributes and register it; a class
  without `name=` is an unregistered base; unknown keywords, a bad data kind and a taken name are refused.
- methods: shard invariance of the random draws and the loss; each step's measured NFE is the declared worst
  case the budget plans with; one training step on the tiny SD and SDXL shapes gives a finite loss and moves
  the policy.
- samplers: declarations (exact, stochastic, max_steps, calls per step) hold as measured; an exact sampler's
  round trip is exact to float64 rounding on per-sample paths; the stored state is counted from what it holds.
- scorers: a scorer this repository ships weights for scores one float per image, in its declared direction,
  the same one by one as in a batch; any other raises MissingWeightsError saying how to get its weights.
- set metrics: names apart from the scorers'; a declaration names its backbone, resampling and values; one on a
  backbone this repository ships gives every declared value, in its range, inside its interval; any other raises
  MissingWeightsError saying how to get its backbone's weights.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import re
import sys

import pytest
import torch
from conftest import build_tiny_sd3_backbone
from test_inversion import _float64_eps_backbone
from test_online_methods import RedReward

from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.core.registry import Registry
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.trainer import Trainer, declared_step_cost
from methods.alignment import METHODS
from methods.alignment.base import AlignmentMethod, ImageBatch, PairBatch
from methods.alignment.dpo import DPOConfig
from methods.alignment.inpo import inversion_levels
from methods.inversion import SAMPLERS
from methods.inversion.base import InversionSampler, NoSettings, TwoStepSampler, sampling_levels
from methods.shards import sharded
from metrics import SCORERS, SET_METRICS, MissingWeightsError, Scorer
from metrics.clip_score import ClipBackboneScorer
from metrics.oracle import OracleConfig
from metrics.sets.base import SetMetric, Value
from metrics.sets.build import build_set_metrics
from metrics.sets.features import ToyClipImageFeatures
from metrics.sets.vendi import VendiConfig
from metrics.weights import WEIGHTS_ENV

PROMPT = "a small red circle on the left, black background"


# ----------------------------------------------------------------------------------------------- discovery


def modules_registering_nothing(registry: Registry) -> list[str]:
    """The modules `discover` imported as plugins that define no registered object (a helper that belongs in
    `skip`, or a plugin class without `name=`)."""
    registered = {getattr(obj, "__module__", None) for _, obj in registry.items()}
    return [module for module in registry.plugin_modules if module not in registered]


@pytest.mark.parametrize("registry", [METHODS, SAMPLERS, SCORERS, SET_METRICS], ids=lambda r: r.kind)
def test_every_plugin_module_registers_something(registry):
    assert registry.plugin_modules, f"no {registry.kind} module was discovered"
    assert modules_registering_nothing(registry) == []


@pytest.fixture()
def plugin_folder(tmp_path, monkeypatch):
    """An importable package `dropin_plugins` on tmp_path whose `__init__` discovers its plugins as the project's
    packages do; the test writes the modules. Its modules leave sys.modules afterwards."""
    package = tmp_path / "dropin_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("from bench.core.registry import Registry\n\nTHINGS = Registry('thing')\n"
                                         "THINGS.discover(__name__, skip=('helpers',))\n")
    (package / "helpers.py").write_text("raise AssertionError('a skipped module is never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    _forget(package.name)


def _forget(package_name: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == package_name]:
        del sys.modules[name]


def _plugin(name: str) -> str:
    return f"from dropin_plugins import THINGS\n\n\n@THINGS.register({name!r})\nclass Plugin:\n    pass\n"


def _fresh_import(package):
    """Import the package as a new process would, seeing the files now in its folder."""
    _forget(package.name)
    importlib.invalidate_caches()  # the folder's listing is cached per directory
    return importlib.import_module(package.name)


def test_discovery_registers_a_module_dropped_into_the_folder(plugin_folder):
    (plugin_folder / "alpha.py").write_text(_plugin("alpha"))
    assert _fresh_import(plugin_folder).THINGS.names() == ["alpha"]

    (plugin_folder / "beta.py").write_text(_plugin("beta"))
    (plugin_folder / "gamma").mkdir()  # a subpackage is a plugin too
    (plugin_folder / "gamma" / "__init__.py").write_text(_plugin("gamma"))
    things = _fresh_import(plugin_folder).THINGS
    assert things.names() == ["alpha", "beta", "gamma"]
    assert things.plugin_modules == ["dropin_plugins.alpha", "dropin_plugins.beta", "dropin_plugins.gamma"]
    assert modules_registering_nothing(things) == []

    (plugin_folder / "empty.py").write_text("VALUE = 1  # registers nothing\n")
    assert modules_registering_nothing(_fresh_import(plugin_folder).THINGS) == ["dropin_plugins.empty"]

    with pytest.raises(ValueError, match=r"skip names \['nope'\], which are not modules of the package"):
        Registry("thing").discover("dropin_plugins", skip=("helpers", "nope"))


# ----------------------------------------------------------------------------------------------- declaration

# Keywords that make a complete declaration for each base, name aside.
DECLARATIONS = [
    (AlignmentMethod, METHODS, {"data_kind": "pairs", "needs_reference": True, "config": DPOConfig}),
    (InversionSampler, SAMPLERS, {"config": NoSettings}),
    (Scorer, SCORERS, {"config": OracleConfig, "higher_is_better": True, "scale": "a throwaway scale"}),
]


@pytest.fixture()
def scratch_registries(monkeypatch):
    """The registries with their entries copied, so the throwaway plugins below leave the shipped set as it was."""
    for registry in (METHODS, SAMPLERS, SCORERS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))


def test_a_class_given_a_name_is_registered_with_the_attributes_its_keywords_set(scratch_registries):
    class Method(AlignmentMethod, name="throwaway-method", data_kind="binary", needs_reference=False, config=DPOConfig,
                 kind="online"):
        """A throwaway method."""

    class Sampler(InversionSampler, name="throwaway-sampler", config=NoSettings, exact=True, stochastic=True,
                  max_steps=7):
        pass

    class Metric(Scorer, name="throwaway-metric", config=OracleConfig, higher_is_better=False,
                 scale="a throwaway scale, lower is better"):
        pass

    assert METHODS.get("throwaway-method") is Method and Method.__doc__ == "A throwaway method."
    assert (Method.name, Method.data_kind, Method.needs_reference, Method.Config, Method.kind) == (
        "throwaway-method", "binary", False, DPOConfig, "online")
    assert SAMPLERS.get("throwaway-sampler") is Sampler
    assert (Sampler.name, Sampler.Config, Sampler.exact, Sampler.stochastic, Sampler.max_steps) == (
        "throwaway-sampler", NoSettings, True, True, 7)
    assert SCORERS.get("throwaway-metric") is Metric
    assert (Metric.name, Metric.Config, Metric.higher_is_better, Metric.scale) == (
        "throwaway-metric", OracleConfig, False, "a throwaway scale, lower is better")


def test_a_class_without_a_name_is_an_unregistered_base_its_subclasses_inherit_from(scratch_registries):
    before = METHODS.names()

    class PairMethod(AlignmentMethod, data_kind="pairs", needs_reference=True):
        pass

    class Method(PairMethod, name="throwaway-pair-method", config=DPOConfig):
        pass

    assert METHODS.names() == sorted([*before, "throwaway-pair-method"])
    assert (Method.data_kind, Method.needs_reference, Method.kind) == ("pairs", True, "offline")
    # The shipped intermediate bases: not registered, their keywords inherited (TwoStepSampler's exact=True).
    assert TwoStepSampler not in dict(SAMPLERS.items()).values() and SAMPLERS.get("bdia").exact
    assert ClipBackboneScorer not in dict(SCORERS.items()).values()
    assert SCORERS.get("toy-clip").higher_is_better and SCORERS.get("toy-clip").Config is SCORERS.get("toy-pickscore").Config


@pytest.mark.parametrize(("base", "registry", "keywords"), DECLARATIONS, ids=lambda x: getattr(x, "__name__", None))
def test_an_unknown_class_keyword_is_a_type_error_naming_it(scratch_registries, base, registry, keywords):
    before = registry.names()
    with pytest.raises(TypeError, match=r"Typo: unknown class keyword 'higher_is_beter'; a \w+ class takes name, "):
        class Typo(base, name="throwaway-typo", higher_is_beter=True, **keywords):
            pass
    assert registry.names() == before


def test_a_method_of_an_unknown_data_kind_is_refused(scratch_registries):
    with pytest.raises(ValueError, match=r"Method.data_kind must be one of \('pairs', 'binary', 'images', 'prompts'\)"):
        class Method(AlignmentMethod, name="throwaway-method", data_kind="pair", needs_reference=True, config=DPOConfig):
            pass
    with pytest.raises(ValueError, match="Kindless.data_kind must be one of"):  # a name with no data kind at all
        class Kindless(AlignmentMethod, name="throwaway-method", needs_reference=True, config=DPOConfig):
            pass
    assert "throwaway-method" not in METHODS


@pytest.mark.parametrize(("base", "registry", "keywords"), DECLARATIONS[:2], ids=lambda x: getattr(x, "__name__", None))
def test_a_plugin_on_an_unknown_schedule_is_refused(scratch_registries, base, registry, keywords):
    """Methods and samplers declare their noise schedules from `bench.core.schedules` (one check for both)."""
    before = registry.names()
    for schedules in (("ode",), (), ("vp", "edm")):
        with pytest.raises(ValueError, match=re.escape(f"Odd.schedules must be some of ('vp', 'flow'), got {schedules!r}")):
            class Odd(base, name="throwaway-odd", schedules=schedules, **keywords):
                pass
    assert registry.names() == before


@pytest.mark.parametrize(("base", "registry", "keywords"), DECLARATIONS, ids=lambda x: getattr(x, "__name__", None))
def test_a_taken_name_is_refused(scratch_registries, base, registry, keywords):
    taken = registry.names()[0]
    shipped = registry.get(taken)
    with pytest.raises(ValueError, match=f"{registry.kind} '{taken}' is already registered to"):
        class Again(base, name=taken, **keywords):
            pass
    assert registry.get(taken) is shipped


# ----------------------------------------------------------------------------------------------- methods

# Methods whose shards' losses do not average to the whole batch's, and why.
LOSS_NEEDS_THE_PROCESS_GROUP = {"kto": "its reference point z0 is a mean over the global batch"}

# Methods whose step cost varies: a step's NFE from the step's logs and its number of items. Any other method
# costs its declared worst case on every step.
VARIABLE_STEP_COST = {
    # 8F per pair plus one no-grad forward per latent (2 per pair) per inversion step taken: each pair is
    # inverted only up to its own drawn t
    "inpo": lambda logs, items: 8 * items + round(logs["inversion_steps"] * 2 * items),
}


# Methods that train flow-matching backbones only (`schedules=("flow",)`; a variance-preserving one is refused in one
# line, tests/test_flow_online.py): their training contracts are checked on the tiny SD3-shaped backbone.
FLOW_ONLY = {name for name in METHODS.names() if "vp" not in METHODS.get(name).schedules}
BACKBONE_FIXTURES = {"sd": "tiny_backbone", "sdxl": "tiny_sdxl_backbone", "sd3": "tiny_sd3_backbone"}


@pytest.fixture(scope="module")
def toy_pairs(tiny_toy_dir):
    return preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet"), max_pairs=8)


def _train(name: str, backbone, pairs, steps: int, config: TrainConfig):
    """`steps` optimizer steps of method `name` (an online one samples for the pairs' prompts, rewarded by red)."""
    reward = RedReward() if METHODS.get(name).kind == "online" else None
    return Trainer(METHODS.get(name)(), backbone, encode_preferences(backbone, pairs), config,
                   Budget.parse(f"{steps}steps"), seed=0, progress=False, reward=reward).fit()


OFFLINE_METHODS = [name for name in METHODS.names() if METHODS.get(name).kind == "offline"]
TRAINED_METHODS = [name for name in METHODS.names() if METHODS.get(name).kind != "inference-time"]  # the trainer's


@pytest.mark.parametrize("name", OFFLINE_METHODS)  # online methods train in one process for now (`ExperienceSampler`)
def test_method_draws_the_same_for_a_batch_and_for_its_shards(tiny_backbone, name):
    """The generator ends in the same state after a whole batch and after either shard (so the next step's
    draws agree), and the shards' losses average to the batch's."""
    method = METHODS.get(name)()
    policy_unet = copy.deepcopy(tiny_backbone.unet)
    with torch.no_grad():
        for p in policy_unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    policy = tiny_backbone.with_unet(policy_unet)
    g = torch.Generator().manual_seed(0)
    shape = (4, *tiny_backbone.latent_shape)
    cond = tiny_backbone.encode_prompts([f"a small red circle {i}" for i in range(4)])
    if method.data_kind == "pairs":
        whole = PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)
        shard = [PairBatch(whole.winner[r * 2:r * 2 + 2], whole.loser[r * 2:r * 2 + 2], cond[torch.arange(r * 2, r * 2 + 2)])
                 for r in range(2)]
    else:
        whole = ImageBatch(torch.randn(shape, generator=g), cond, torch.tensor([True, False, True, True]))
        shard = [ImageBatch(whole.latents[r * 2:r * 2 + 2], cond[torch.arange(r * 2, r * 2 + 2)],
                            whole.desirable[r * 2:r * 2 + 2]) for r in range(2)]
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        loss = method.loss(whole, policy, tiny_backbone, rng).loss.item()
    losses = []
    for r in range(2):
        rng_r = torch.Generator().manual_seed(1)
        with sharded(r, 2), torch.no_grad():
            losses.append(method.loss(shard[r], policy, tiny_backbone, rng_r).loss.item())
        assert torch.equal(rng_r.get_state(), rng.get_state()), f"shard {r} consumed the generator differently"
    if name not in LOSS_NEEDS_THE_PROCESS_GROUP:
        assert sum(losses) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", TRAINED_METHODS)  # inference-time methods: tests/test_doodl.py checks generate's NFE
def test_method_steps_cost_the_declared_nfe(request, toy_pairs, name):
    """Each optimizer step's measured NFE (a backward counting as 2 forwards) is `declared_step_cost`, the worst
    case the budget meter plans with: exactly, or for a method whose cost varies what its logs say, never more."""
    config = TrainConfig(lr=1e-3, batch_size=2)
    backbone = request.getfixturevalue(BACKBONE_FIXTURES["sd3" if name in FLOW_ONLY else "sd"])
    result = _train(name, backbone, toy_pairs, 2, config)
    step_nfe = [b["nfe"] - a["nfe"] for a, b in zip([{"nfe": 0}] + result.history, result.history)]
    assert result.steps == 2 and sum(step_nfe) == result.usage.nfe
    declared = declared_step_cost(METHODS.get(name)(), config, "nfe")
    cost = VARIABLE_STEP_COST.get(name, lambda logs, items: declared)
    assert step_nfe == [cost(logs, config.batch_size) for logs in result.history]
    assert max(step_nfe) <= declared


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declares_its_nfe_with_one_signature_and_a_guided_forward_once_where_embedded(name):
    """`max_nfe_per_item(embedded_guidance)` has the base class's signature in every method (the trainer and the dry run
    pass whether the backbone takes the guidance scale as an input); where it does (FLUX.1-dev) a guided forward is one
    branch, so an online method declares at most its CFG count, exactly that without guidance; an offline or
    inference-time method's forwards are unguided and its declaration does not change."""
    cls = METHODS.get(name)
    assert inspect.signature(cls.max_nfe_per_item) == inspect.signature(AlignmentMethod.max_nfe_per_item)
    method = cls()
    cfg, embedded = method.max_nfe_per_item(), method.max_nfe_per_item(embedded_guidance=True)
    if cls.kind == "online" and method.guidance_factor() > 1:
        assert 0 < embedded < cfg
    else:
        assert embedded == cfg


@pytest.mark.parametrize(("name", "family"), [(name, family) for name in TRAINED_METHODS
                                               for family in (("sd3",) if name in FLOW_ONLY else ("sd", "sdxl"))])
def test_method_trains_a_step(request, toy_pairs, name, family):
    backbone = request.getfixturevalue(BACKBONE_FIXTURES[family])
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    result = _train(name, backbone, toy_pairs, 1, TrainConfig(lr=1e-3, batch_size=2))
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items())


# ----------------------------------------------------------------------------------------------- samplers

EXACT_SAMPLERS = [name for name in SAMPLERS.names() if SAMPLERS.get(name).exact]
# Round trip of an exact sampler in float64: measured at most 8e-14 (EDICT; BDIA, O-BELM 8e-15, DDPM-EF 3e-14) on
# latents of magnitude up to 3.2, i.e. a few hundred units of float64 rounding (3.2 · 2.2e-16 = 7e-16) after the
# inverse's amplification. 1e-11 leaves two orders of margin for other platforms' summation orders, and sits ten
# orders below an inexact sampler's error on the same paths (DDIM: 9.6 on this random UNet).
ROUND_TRIP_ATOL = 1e-11


@pytest.fixture(scope="module")
def eps_backbone(tiny_arch):
    return _float64_eps_backbone(tiny_arch)


@pytest.fixture(scope="module")
def flow_backbone():
    return build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)


def _backbone_for(request, name: str):
    """The float64 backbone a sampler's contract is checked on: the ε backbone where the sampler declares the VP
    schedule, else (a flow-only sampler) the tiny SD3 one."""
    return request.getfixturevalue("eps_backbone" if "vp" in SAMPLERS.get(name).schedules else "flow_backbone")


def _latents(backbone, batch: int) -> torch.Tensor:
    return torch.randn((batch, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_declares_its_kind(name):
    cls = SAMPLERS.get(name)
    assert isinstance(cls.exact, bool) and isinstance(cls.stochastic, bool)
    assert cls.max_steps is None or (isinstance(cls.max_steps, int) and cls.max_steps >= 1)
    assert cls.schedules and set(cls.schedules) <= {"vp", "flow"}
    calls = cls().inversion_calls_per_step
    assert isinstance(calls, int) and calls >= 1


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_inverts_at_the_declared_calls_per_step(request, name):
    """At guidance 1, N steps of B latents cost B · `inversion_calls(N)` NFE, N · B · `inversion_calls_per_step` (the
    worst case per latent that InPO's budget declaration uses) unless steps share calls (FireFlow: N + 1)."""
    backbone = _backbone_for(request, name)
    cond = backbone.encode_prompts([PROMPT] * 2)
    sampler = SAMPLERS.get(name)()
    backbone.nfe.reset()
    sampler.invert(backbone, _latents(backbone, 2), cond, sampling_levels(backbone, 4), guidance=1.0,
                   rng=torch.Generator().manual_seed(0))
    assert backbone.nfe.total == 2 * sampler.inversion_calls(4) <= 4 * 2 * sampler.inversion_calls_per_step


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_draws_noise_only_if_declared_stochastic(request, name):
    backbone = _backbone_for(request, name)
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0, levels, sampler = _latents(backbone, 2), sampling_levels(backbone, 3), SAMPLERS.get(name)()
    one, other = (sampler.invert(backbone, x0, cond, levels, guidance=1.0,
                                 rng=torch.Generator().manual_seed(seed)).latents for seed in (0, 1))
    assert torch.equal(one, other) != sampler.stochastic


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_stored_size_counts_what_the_state_holds(request, name):
    """`stored_size` (the storage column of `bench invert`) equals an independent count of the state's tensors,
    in latents per image, without and with guidance."""
    backbone = _backbone_for(request, name)
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0 = _latents(backbone, 2)
    for steps, guidance in ((3, 1.0), (6, 3.0)):
        state = SAMPLERS.get(name)().invert(backbone, x0, cond, sampling_levels(backbone, steps),
                                            guidance=guidance, rng=torch.Generator().manual_seed(0))
        held = sum(t.numel() for t in (state.latents, *state.extra.values())) / x0.numel()
        assert state.stored_size().total == pytest.approx(held), (steps, guidance)


@pytest.mark.parametrize("name", EXACT_SAMPLERS)
def test_exact_sampler_round_trips_on_per_sample_paths(eps_backbone, name):
    """InPO's exact paths: each latent inverted to its own t on a 10-step grid (999: all 10 steps; 1: a single
    step), padded by repeats; reconstruct(invert(x0)) = x0 to rounding, and (for a sampler that draws no noise) each
    path as it would be inverted alone."""
    t = torch.tensor([999, 450, 150, 1])
    levels = inversion_levels(t, 1000, 10, "exact")  # (K+1, 4)
    cond = eps_backbone.encode_prompts([PROMPT, "a blue square", "", PROMPT])
    x0 = _latents(eps_backbone, 4)
    sampler = SAMPLERS.get(name)()
    state = sampler.invert(eps_backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0))
    error = (sampler.reconstruct(eps_backbone, state, cond) - x0).abs().max().item()
    assert error <= ROUND_TRIP_ATOL, error
    if not sampler.stochastic:  # a stochastic sampler's draws depend on the batch
        alone = sampler.invert(eps_backbone, x0[1:2], cond[1:2], levels[:, 1:2])
        assert torch.allclose(state.latents[1:2], alone.latents, atol=1e-12, rtol=0)
    assert (state.latents[0] - x0[0]).abs().max().item() > 0.1  # the round trip went somewhere


# ----------------------------------------------------------------------------------------------- scorers

# The scorers whose weights this repository ships (or that need none): they load offline with their defaults.
SHIPPED = {"oracle", "toy-clip", "toy-pickscore"}
# Batch against one-by-one scores: measured at most 1.5e-5 on toy-clip's 0-100 scale and 6e-6 on toy-pickscore's
# (relative 2e-7 and 3e-7: a few float32 units from the batched matmuls' summation order; the oracle is exact).
# rtol 1e-5 leaves a margin of 30 and still catches any cross-talk between the images of a batch.
BATCH_RTOL = 1e-5


@pytest.fixture()
def no_local_weights(tmp_path, monkeypatch):
    """No $BENCH_WEIGHTS_DIR, no toy build override and an empty hub cache: only what the repository ships."""
    import huggingface_hub.constants

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("BENCH_TOY_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


@pytest.fixture(scope="module")
def toy_renders():
    """64 renders of the held-out toy prompts with their captions, and the captions shifted by one (mismatched)."""
    from bench.toy.world import render_dataset, split_combos

    images, captions = render_dataset(split_combos().test, 1, seed=3)  # (64, 3, 32, 32) in [0, 1]
    return images, captions, captions[1:] + captions[:1]


@pytest.mark.parametrize("name", [name for name in SCORERS.names() if name not in SHIPPED])
def test_scorer_without_weights_says_how_to_get_them(no_local_weights, name):
    cls = SCORERS.get(name)
    with pytest.raises(MissingWeightsError) as err:
        cls()
    message = str(err.value)
    assert message.startswith(f"{name}: ") and f"--weights {name}=" in message, message
    assert any(spec.repo in message for spec in cls.weight_specs()), message


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scorer_scores_each_image_in_its_declared_direction(no_local_weights, toy_renders, name):
    """One finite float per image; the toy world's ground truth (a render matches its own caption, not another
    prompt's) comes out on the side `higher_is_better` says."""
    scorer = SCORERS.get(name)()
    images, captions, mismatched = toy_renders
    right, wrong = scorer.score(captions, images), scorer.score(mismatched, images)
    assert right.shape == (len(images),) and right.dtype.is_floating_point and torch.isfinite(right).all()
    sign = 1 if scorer.higher_is_better else -1
    assert (sign * (right - wrong) > 0).float().mean() > 0.8


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scorer_scores_a_batch_as_one_by_one(no_local_weights, toy_renders, name):
    scorer = SCORERS.get(name)()
    images, captions, _ = toy_renders
    images, captions = images[:16], captions[:16]
    single = torch.cat([scorer.score([caption], images[i:i + 1]) for i, caption in enumerate(captions)])
    torch.testing.assert_close(single, scorer.score(captions, images), rtol=BATCH_RTOL, atol=1e-6)


# ----------------------------------------------------------------------------------------------- set metrics

# The feature backbones whose weights this repository ships: the metrics on them run offline with their defaults.
SHIPPED_FEATURES = {"toy-clip-image"}
SET_KEYWORDS = {"config": VendiConfig, "features": ToyClipImageFeatures, "needs_reference": False, "needs_prompts": True,
                "resampling": "bootstrap", "values": {"vendi": Value(True, "a throwaway scale")}}


def test_set_metric_names_are_apart_from_scorer_names():
    """`bench eval --metrics` takes both kinds, and code that iterates SCORERS never meets a set metric."""
    assert SET_METRICS.names() and not set(SET_METRICS.names()) & set(SCORERS.names())
    assert not any(issubclass(cls, SetMetric) for _, cls in SCORERS.items())


def test_a_set_metric_declaration_is_checked(monkeypatch):
    monkeypatch.setattr(SET_METRICS, "_items", dict(SET_METRICS._items))
    with pytest.raises(TypeError, match=r"unknown class keyword 'higher_is_better'; a set metric class takes name, "):
        class Typo(SetMetric, name="throwaway-set", higher_is_better=True, **SET_KEYWORDS):
            pass
    with pytest.raises(ValueError, match=r"Resampled.resampling must be one of \('bootstrap', 'jackknife'\)"):
        class Resampled(SetMetric, name="throwaway-set", **{**SET_KEYWORDS, "resampling": "subsample"}):
            pass
    with pytest.raises(TypeError, match="resampling 'jackknife' reads VendiConfig.jackknife_groups"):
        class Jackknifed(SetMetric, name="throwaway-set", **{**SET_KEYWORDS, "resampling": "jackknife"}):
            pass
    with pytest.raises(ValueError, match="set metric 'oracle': the name is taken by a per-image scorer"):
        class Clash(SetMetric, name="oracle", **SET_KEYWORDS):
            pass
    assert "throwaway-set" not in SET_METRICS


@pytest.mark.parametrize("name", [n for n in SET_METRICS.names() if SET_METRICS.get(n).Features.key not in SHIPPED_FEATURES])
def test_set_metric_without_weights_says_how_to_get_them(no_local_weights, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        build_set_metrics([name])
    message = str(err.value)
    assert message.startswith(f"{name}: ") and f"--weights {name}=" in message, message
    assert SET_METRICS.get(name).Features.weight_spec(name).repo in message, message


@pytest.mark.parametrize("name", [n for n in SET_METRICS.names() if SET_METRICS.get(n).Features.key in SHIPPED_FEATURES])
def test_shipped_set_metric_gives_its_values_in_range_inside_their_intervals(no_local_weights, toy_renders, name):
    """32 renders as the set (two per pseudo-prompt), the other 32 as the reference."""
    metrics, backbones = build_set_metrics([name])
    metric = metrics[name]
    features = backbones[metric.Features.key].features(toy_renders[0])  # (64, D)
    prompts = [f"prompt {i // 2}" for i in range(32)]
    reference = features[32:] if metric.needs_reference else None
    metric.check_sets(32, None if reference is None else 32, prompts)
    result = metric.evaluate(features[:32], reference, prompts)
    assert set(result["values"]) == set(metric.values) and result["n"] == 32 and result["clusters"] == 16
    for value_name, declared in metric.values.items():
        stat = result["values"][value_name]
        assert declared.low <= stat["ci_low"] <= stat["value"] <= stat["ci_high"] <= declared.high, (value_name, stat)
        assert math.isfinite(stat["value"])
