"""The Backbone on FLUX-shaped pipelines: packing of the latents into 2x2 patches, the resolution-shifted σ schedule,
the embedded (distilled) guidance, FLUX's text encoding and VAE, loading and saving, each against diffusers' own
FluxPipeline on the same tiny random components; every inversion sampler's round trip and a trainer step of every
trained method on the tiny FLUX backbone (registry-driven)."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import build_tiny_flux_backbone
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from test_flow_offline import LOSS_AT_INIT
from test_flow_samplers import EXACT_BOUND, REFUSALS, SAMPLING_REFUSALS
from test_online_methods import RedReward

from bench.core.backbone import (
    SPACES,
    Backbone,
    BackboneLoadError,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from bench.core.budget import Budget
from bench.core.config import TrainConfig, apply_overrides
from bench.harness.data import EncodedPreferences
from bench.harness.sampling import initial_noise, sample_latents
from bench.harness.suites import get_suite
from bench.harness.trainer import Trainer, declared_step_cost
from methods.alignment import METHODS
from methods.alignment.flow_grpo import FlowGRPO, FlowGRPOConfig
from methods.inversion import SAMPLERS
from methods.inversion.base import InversionState, per_sample_levels, sampling_levels

PROMPTS = ["a small red circle on the left, black background", "a large cyan triangle in the center"]
FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (FLUX.1-dev)
STEPS = 4


def diffusers_pipeline(backbone: Backbone) -> FluxPipeline:
    """diffusers' FLUX pipeline over the backbone's own components (its T5 is FluxPipeline's text_encoder_2)."""
    return FluxPipeline(transformer=backbone.unet, scheduler=copy.deepcopy(backbone.scheduler), vae=backbone.vae,
                        text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
                        text_encoder_2=backbone.text_encoder_3, tokenizer_2=backbone.tokenizer_3)


def test_family_shapes_and_packing(tiny_flux_backbone):
    b = tiny_flux_backbone
    assert (b.family, b.is_flow, b.native_space, b.prediction_type) == ("flux", True, "flow", "flow_prediction")
    assert b.latent_shape == (16, 8, 8) and b.image_tokens == 16 and b.max_sequence_length == 512
    x = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 3, 16, 8, 8)) and packed.shape == (3, 16, 64)
    assert torch.equal(unpack_latents(packed, 8, 8), x)
    # FluxPipeline unpacks by pixel size and its VAE factor: 32 px / 4 = 8 latent rows
    assert torch.equal(FluxPipeline._unpack_latents(packed, 32, 32, 4), x)
    assert torch.equal(latent_image_ids(4, 4), FluxPipeline._prepare_latent_image_ids(3, 4, 4, "cpu", torch.float32))


def test_sigma_schedule_is_flux_pipelines_with_the_resolution_shift(tiny_flux_backbone):
    b = tiny_flux_backbone
    config = b.scheduler.config
    for steps in (1, 4, 28):
        reference = copy.deepcopy(b.scheduler)
        mu = calculate_shift(16, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                             config.max_shift)  # 8x8 latents in 2x2 patches: 16 tokens
        reference.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        levels = b.timesteps(steps)
        assert levels.dtype == torch.float64 and torch.equal(levels, reference.timesteps.double())
        assert b.noise_levels(levels)[1].tolist() == pytest.approx(reference.sigmas[:-1].tolist(), abs=1e-7)
    # σ' = e^μ / (e^μ + 1/σ − 1) of σ = 1, 3/4, 1/2, 1/4 at μ = 0.5 + 0.65 (16 − 256) / 3840 = 0.459375
    e_mu = math.exp(0.459375)
    expected = [1000 * e_mu / (e_mu + 1 / s - 1) for s in (1.0, 0.75, 0.5, 0.25)]
    assert b.timesteps(4).tolist() == pytest.approx(expected, abs=1e-3)
    # training levels: uniform over the scheduler's unshifted table (dynamic shifting), as diffusers' FLUX training
    table = FlowMatchEulerDiscreteScheduler.from_config(config).timesteps.double()
    assert (table - torch.arange(1000, 0, -1).double()).abs().max().item() < 1e-4  # j/T · T in float32
    drawn = b.training_levels(500, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.float64 and torch.isin(drawn, table).all()


def test_encode_prompts_equals_flux_pipeline_encode_prompt(tiny_flux_backbone):
    b = tiny_flux_backbone
    embeds, pooled, text_ids = diffusers_pipeline(b).encode_prompt(PROMPTS, None, device="cpu")
    cond = b.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, 512, 32) and cond.added["pooled_projections"].shape == (2, 16)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.added["pooled_projections"], pooled)
    assert torch.equal(text_ids, torch.zeros(512, 3))


def test_euler_sampling_through_the_backbone_equals_flux_pipeline(tiny_flux_backbone):
    """`sample_latents` (the Backbone's denoised pair, Euler's x + (σ' − σ) u on this schedule) against FluxPipeline's
    own loop (FlowMatchEulerDiscreteScheduler.step) from the same noise, packed for the pipeline, at the distilled
    guidance 3.5: one transformer call of B latents per step, then decoded as the pipeline decodes."""
    b, seeds = tiny_flux_backbone, [3, 4]
    noise = initial_noise(seeds, b.latent_shape)
    pipe = diffusers_pipeline(b)
    call = dict(height=32, width=32, num_inference_steps=STEPS, guidance_scale=FLUX_GUIDANCE)
    expected = pipe(PROMPTS, latents=pack_latents(noise), output_type="latent", **call).images  # (B, 16, 64) packed
    expected_images = pipe(PROMPTS, latents=pack_latents(noise), output_type="pt", **call).images
    b.nfe.reset()
    latents = sample_latents(b, b.encode_prompts(PROMPTS), seeds, steps=STEPS, guidance=FLUX_GUIDANCE)
    assert (b.nfe.forward, b.nfe.calls) == (STEPS * 2, STEPS)  # 1 NFE per latent per step: no CFG batch
    difference = (latents - unpack_latents(expected, 8, 8)).abs().max().item()
    assert difference < 1e-5, difference  # measured 4.8e-7
    assert (b.decode(latents) - expected_images).abs().max().item() < 1e-5  # latents / 0.3611 + 0.1159, decoded


def test_transformer_inputs_guidance_and_nfe(tiny_flux_backbone):
    """The transformer gets σ = t/1000 and w as float32 (B,), the packed latents and their ids; `prediction` at any w
    is one call of B latents; an unconditional branch is refused at w ≠ 1, and so is w ≠ 1 without the embedding."""
    b = tiny_flux_backbone
    x = torch.randn(3, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = b.encode_prompts(["a red circle"] * 3)
    seen = []
    hook = b.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        for guidance in (1.0, FLUX_GUIDANCE):
            b.nfe.reset()
            b.prediction(x, 857.6923, cond, "flow", guidance)
            assert (b.nfe.forward, b.nfe.calls, b.nfe.calls_by_batch) == (3, 1, {(3, False): 1})
    hook.remove()
    assert [kw["guidance"].tolist() for kw in seen] == [[1.0] * 3, [3.5] * 3]
    inputs = seen[1]
    assert inputs["timestep"].dtype == torch.float32 and inputs["timestep"].tolist() == pytest.approx([0.8576923] * 3)
    assert inputs["hidden_states"].shape == (3, 16, 64) and torch.equal(inputs["hidden_states"], pack_latents(x))
    assert torch.equal(inputs["img_ids"], latent_image_ids(4, 4)) and torch.equal(inputs["txt_ids"], torch.zeros(512, 3))
    with torch.no_grad(), pytest.raises(ValueError, match="no unconditional branch"):
        b.prediction(x, 500.0, cond, "flow", 2.0, uncond=b.null_conditioning(3))
    with torch.no_grad():  # at w = 1 an `uncond` is unused, as CFG's w = 1 on every family
        assert torch.equal(b.prediction(x, 500.0, cond, "flow", 1.0, uncond=b.null_conditioning(3)),
                           b.prediction(x, 500.0, cond, "flow"))
    undistilled = build_tiny_flux_backbone(guidance_embeds=False)
    with torch.no_grad(), pytest.raises(ValueError, match="guidance_embeds"):
        undistilled.eps(x, 500.0, undistilled.encode_prompts(["a red circle"] * 3), guidance=2.0)


def test_conversions_round_trip_and_denoise_solves_the_velocity(tiny_flux_backbone):
    b = tiny_flux_backbone.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4, *b.latent_shape, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([1000.0, 612.8659, 345.419, 1.0], dtype=torch.float64)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    x_t = b.add_noise(x0, eps, t)
    assert (x_t - ((1 - sigma) * x0 + sigma * eps)).abs().max().item() < 1e-15
    u = b.target(x0, eps, t, "flow")
    assert torch.equal(u, eps - x0)
    assert (b.convert(u, x_t, t, "eps") - eps).abs().max().item() < 1e-12
    assert (b.convert(u[1:], x_t[1:], t[1:], "x0") - x0[1:]).abs().max().item() < 1e-12
    a, s = b.coefficients(t, x_t)
    for space in ("eps", "x0", "v"):  # a flow prediction -> space -> flow (below σ = 1: eps and v leave x0 there)
        back = SPACES["flow"].target(*SPACES[space].solve_any(b.convert(u, x_t, t, space)[1:], x_t[1:], a[1:], s[1:]),
                                     a[1:], s[1:])
        assert (back - u[1:]).abs().max().item() < 1e-12, space
    cond = b.encode_prompts(PROMPTS * 2)
    with torch.no_grad():
        velocity = b.prediction(x_t, t, cond, "flow", FLUX_GUIDANCE)
        x0_hat, eps_hat = b.denoise(x_t, t, cond, FLUX_GUIDANCE)
    assert torch.isfinite(x0_hat).all()  # at σ = 1 too, where a = 0
    assert (x0_hat - (x_t - sigma * velocity)).abs().max().item() < 1e-12
    assert (eps_hat - (x_t + (1 - sigma) * velocity)).abs().max().item() < 1e-12


def test_vae_shift_and_scale(tiny_flux_backbone):
    b = tiny_flux_backbone
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = b.encode_images(images)
    assert latents.shape == (2, *b.latent_shape)
    with torch.no_grad():
        z = b.vae.encode(images * 2 - 1).latent_dist.mode()
        pixels = b.vae.decode(latents / 0.3611 + 0.1159).sample
    assert torch.allclose(latents, (z - 0.1159) * 0.3611, atol=1e-6)
    assert torch.allclose(b.decode(latents), ((pixels + 1) / 2).clamp(0, 1), atol=1e-6)


def test_save_and_load_round_trip_with_diffusers(tiny_flux_backbone, tmp_path):
    b = tiny_flux_backbone
    b.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"] and "text_encoder_3" not in index
    assert Backbone.native_space_of(tmp_path / "pipe") == "flow"
    assert Backbone.embeds_guidance_of(tmp_path / "pipe")  # read from transformer/config.json, nothing loaded
    loaded = Backbone.from_pretrained(tmp_path / "pipe")
    assert loaded.family == "flux" and loaded.text_encoder_3 is not None and loaded.text_encoder_2 is None
    assert loaded.embeds_guidance
    assert torch.equal(loaded.timesteps(10), b.timesteps(10))
    cond = b.encode_prompts(PROMPTS)
    assert torch.equal(loaded.encode_prompts(PROMPTS).embeds, cond.embeds)
    x = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.eps(x, 700.0, cond, FLUX_GUIDANCE), b.eps(x, 700.0, cond, FLUX_GUIDANCE))
    assert loaded.fingerprint("text") == b.fingerprint("text") and loaded.fingerprint("unet") == b.fingerprint("unet")
    pipe = FluxPipeline.from_pretrained(tmp_path / "pipe")  # diffusers' own pipeline loads it and encodes alike
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(PROMPTS, None, device="cpu")
    assert torch.equal(embeds, cond.embeds) and torch.equal(pooled, cond.added["pooled_projections"])
    # without the CLIP tokenizer (rebuilt from open_clip's vocabulary); the T5 one is always written
    b.save_pretrained(tmp_path / "bare", include_tokenizer=False)
    index = json.loads((tmp_path / "bare" / "model_index.json").read_text())
    assert index["tokenizer"] == [None, None] and index["tokenizer_2"][0] == "transformers"
    assert torch.equal(Backbone.from_pretrained(tmp_path / "bare").encode_prompts(PROMPTS).embeds, cond.embeds)
    shutil.rmtree(tmp_path / "bare" / "transformer")
    assert not Backbone.embeds_guidance_of(tmp_path / "bare")
    with pytest.raises(BackboneLoadError, match="FLUX-shaped .* transformer/"):
        Backbone.from_pretrained(tmp_path / "bare")


def test_a_call_without_a_guidance_scale_gets_the_default_guidance(tiny_flux_backbone):
    """`prediction` (and so `eps`, `denoise`) without w gives the transformer `default_guidance`: 1 on the backbone, the
    view's on `with_default_guidance`; a given w is passed as given; a transformer without the embedding (and every
    other family: tests/test_trainer.py) computes at w = 1 whatever the default."""
    b = tiny_flux_backbone
    x = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = b.encode_prompts(PROMPTS)
    view = b.with_default_guidance(FLUX_GUIDANCE)
    seen = []
    hook = b.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["guidance"].tolist()),
                                            with_kwargs=True)
    with torch.no_grad():
        b.prediction(x, 500.0, cond, "flow")
        view.prediction(x, 500.0, cond, "flow")
        view.eps(x, 500.0, cond)
        view.prediction(x, 500.0, cond, "flow", 1.0)  # an explicit w (a rollout's) is kept
        torch.testing.assert_close(view.prediction(x, 500.0, cond, "flow"), b.prediction(x, 500.0, cond, "flow", 3.5),
                                   rtol=0, atol=0)
    hook.remove()
    assert seen == [[1.0] * 2, [3.5] * 2, [3.5] * 2, [1.0] * 2, [3.5] * 2, [3.5] * 2]
    assert b.default_guidance == 1.0 and b.embeds_guidance and view.nfe is b.nfe
    undistilled = build_tiny_flux_backbone(guidance_embeds=False)
    assert not undistilled.embeds_guidance
    plain = undistilled.encode_prompts(PROMPTS)
    with torch.no_grad():
        assert torch.equal(undistilled.with_default_guidance(FLUX_GUIDANCE).prediction(x, 500.0, plain, "flow"),
                           undistilled.prediction(x, 500.0, plain, "flow", 1.0))


# ---------------------------------------------------------------------------------------------------- registries
@pytest.fixture(scope="module")
def flux64():
    return build_tiny_flux_backbone().to(dtype=torch.float64)


def _refusal(name: str, guidance: float):
    """What a sampler's inversion of the whole flow path at `guidance` says on FLUX, or None: the flow refusals of
    tests/test_flow_samplers.py, and null-text's (it optimises an unconditional branch FLUX does not run)."""
    if name == "null-text" and guidance != 1.0:
        return "no unconditional branch"
    return REFUSALS[name][0] if name in REFUSALS else None


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_round_trips_on_flux(flux64, name):
    """Every registered inversion sampler inverts and reconstructs on the tiny FLUX backbone (float64, 4 steps) at
    w = 1 and at the distilled 3.5: finite, exact where the sampler is, refusing where its maths has no answer."""
    backbone = flux64
    cond = backbone.encode_prompts(PROMPTS)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = sampling_levels(backbone, STEPS)
    sampler = SAMPLERS.get(name)()
    if name in REFUSALS:
        message, defined = REFUSALS[name]
        with pytest.raises(ValueError, match=message):
            sampler.invert(backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0))
        levels = levels[defined]
    for guidance in (1.0, FLUX_GUIDANCE):
        if _refusal(name, guidance) == "no unconditional branch":
            with pytest.raises(ValueError, match="no unconditional branch"):
                sampler.invert(backbone, x0, cond, levels, guidance=guidance, rng=torch.Generator().manual_seed(0))
            continue
        state = sampler.invert(backbone, x0, cond, levels, guidance=guidance, rng=torch.Generator().manual_seed(0))
        recon = sampler.reconstruct(backbone, state, cond, guidance=guidance)
        assert torch.isfinite(state.latents).all() and torch.isfinite(recon).all()
        error = (recon - x0).abs().max().item()
        if sampler.exact:
            assert error <= EXACT_BOUND, (guidance, error)
        else:
            assert error > 1e-3, (guidance, error)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_samples_from_sigma_one_on_flux(flux64, name):
    backbone = flux64
    cond = backbone.encode_prompts(PROMPTS)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = InversionState(noise, per_sample_levels(sampling_levels(backbone, STEPS), 2))
    sampler = SAMPLERS.get(name)()
    if name in SAMPLING_REFUSALS:
        with pytest.raises(ValueError, match=SAMPLING_REFUSALS[name]):
            sampler.reconstruct(backbone, state, cond, guidance=FLUX_GUIDANCE)
        return
    guidance = 1.0 if name == "null-text" else FLUX_GUIDANCE  # null-text reconstructs through its ∅ branch
    assert torch.isfinite(sampler.reconstruct(backbone, state, cond, guidance=guidance)).all()


def flux_data(backbone: Backbone) -> EncodedPreferences:
    """Four random latents for two prompts, paired (0 over 1, 2 over 3); online methods sample for the prompts."""
    latents = torch.randn(4, *backbone.latent_shape, generator=torch.Generator().manual_seed(5))
    return EncodedPreferences(latents, ["a", "b", "c", "d"], torch.tensor([0, 0, 1, 1]), list(PROMPTS),
                              backbone.encode_prompts(PROMPTS), torch.tensor([0, 2]), torch.tensor([1, 3]),
                              torch.tensor([True, False, True, False]))


# Every offline method, and the online methods written for flow models (flow-grpo, diffusionnft). The online methods
# of the VP papers (ddpo, grpo, dense-reward, draft) roll out with a DDIM η-step that is not yet defined at σ = 1 and
# give a NaN loss on every flow backbone, SD3's included (issue 15's plan, point 4).
TRAINED = [name for name in METHODS.names()
           if METHODS.get(name).kind == "offline" or METHODS.get(name).kind == "online" and
           "vp" not in METHODS.get(name).schedules]


@pytest.mark.parametrize("name", TRAINED)
def test_every_flow_method_runs_a_trainer_step_on_flux(tiny_flux_backbone, name):
    """One trainer step of every offline method and every flow online method on the tiny FLUX backbone (online:
    rewarded by red): a finite loss, moved weights, and no more NFE than declared with the guidance embedded (a guided
    FLUX evaluation costs 1 per latent, not CFG's 2)."""
    method, config = METHODS.get(name)(), TrainConfig(lr=1e-3, batch_size=2)
    reward = RedReward() if method.kind == "online" else None
    before = {k: v.clone() for k, v in tiny_flux_backbone.unet.state_dict().items()}
    result = Trainer(method, tiny_flux_backbone, flux_data(tiny_flux_backbone), config, Budget.parse("1steps"), seed=0,
                     progress=False, reward=reward).fit()
    assert result.steps == 1 and math.isfinite(result.history[0]["loss"])
    if name in LOSS_AT_INIT:  # the policy is the reference before its first update
        assert result.history[0]["loss"] == pytest.approx(LOSS_AT_INIT[name], abs=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items())
    assert result.usage.nfe <= declared_step_cost(method, config, "nfe", embedded_guidance=True)


def test_flow_grpo_declares_one_branch_per_guided_forward_on_flux(tiny_flux_backbone):
    """A guided forward of a transformer that embeds the guidance scale evaluates each latent once: Flow-GRPO's
    declaration there, G (N + T (3 + [β > 0])) per prompt, is what the backbone meters for a collection and its
    training, half the CFG count G (2N + T (6 + 2 [β > 0])) of the same config; the Trainer plans with it, so a budget
    of exactly one step's NFE trains that step."""
    method, config = FlowGRPO(FlowGRPOConfig(steps=3, group_size=2, guidance=FLUX_GUIDANCE)), TrainConfig(lr=1e-3, batch_size=2)
    per_prompt = 2 * (3 + 2 * (3 + 1))  # G = 2, N = 3, T = ⌊3 · 0.99⌋ = 2 trained steps, β = 0.01 > 0
    assert tiny_flux_backbone.embeds_guidance
    assert method.max_nfe_per_item(embedded_guidance=True) == per_prompt == method.max_nfe_per_item() // 2
    budget = Budget("nfe", declared_step_cost(method, config, "nfe", embedded_guidance=True))
    result = Trainer(method, tiny_flux_backbone, flux_data(tiny_flux_backbone), config, budget, seed=0,
                     progress=False, reward=RedReward()).fit()
    assert result.steps == 1 and result.usage.nfe == budget.limit == 2 * per_prompt  # two prompts


@pytest.mark.parametrize("train_guidance", [1.0, FLUX_GUIDANCE])
def test_offline_training_forwards_get_the_train_guidance_on_flux(tiny_flux_backbone, train_guidance):
    """An offline method's policy and reference forwards (DPO's) give the transformer `TrainConfig.train_guidance` as
    its embedded scale (the flux-dev suite's 3.5, as diffusers' FLUX training scripts; 1 by default); the trained policy
    and the base evaluate at their callers' w as before."""
    seen = []  # (embedded guidance, with gradients) per transformer call; the policy's copy keeps the hook
    hook = tiny_flux_backbone.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((set(kwargs["guidance"].tolist()), torch.is_grad_enabled())),
        with_kwargs=True)
    try:
        result = Trainer(METHODS.get("dpo")(), tiny_flux_backbone, flux_data(tiny_flux_backbone),
                         TrainConfig(lr=1e-3, batch_size=2, train_guidance=train_guidance), Budget.parse("1steps"),
                         seed=0, progress=False).fit()
    finally:
        hook.remove()
    assert result.steps == 1 and math.isfinite(result.history[0]["loss"])
    assert sorted(seen, key=lambda call: call[1]) == [({train_guidance}, False), ({train_guidance}, True)]
    assert tiny_flux_backbone.default_guidance == result.policy.default_guidance == 1.0


@pytest.mark.parametrize("name", ["flow-grpo", "diffusionnft"])
def test_flux_dev_online_methods_roll_out_and_train_at_the_distilled_scale(tiny_flux_backbone, name):
    """On the flux-dev suite the online methods are one velocity field u_θ(x, σ, c, 3.5): every transformer call of a
    training step (rollouts, the policy's and the reference's training forwards) embeds the scale the suite evaluates
    at, and so does the method's evaluation (DiffusionNFT's CFG-free default 1 and Flow-GRPO's CFG 4.5 would not)."""
    suite = get_suite("flux-dev")
    cls = METHODS.get(name)
    method = cls(apply_overrides(cls.Config(), {**suite.method_args.get(name, {}), "steps": 2, "group_size": 2}))
    seen = []  # the embedded scales of each transformer call
    hook = tiny_flux_backbone.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(set(kwargs["guidance"].tolist())), with_kwargs=True)
    try:
        result = Trainer(method, tiny_flux_backbone, flux_data(tiny_flux_backbone),
                         TrainConfig(lr=1e-3, batch_size=2, train_guidance=suite.train.train_guidance),
                         Budget.parse("1steps"), seed=0, progress=False, reward=RedReward()).fit()
    finally:
        hook.remove()
    assert result.steps == 1 and len(seen) > 2
    assert set().union(*seen) == {FLUX_GUIDANCE} == {suite.eval.guidance, method.evaluation(suite.eval).guidance}
