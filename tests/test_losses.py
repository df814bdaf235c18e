"""Method losses against values computed by hand (latent shape (1, 4, 1, 1), ε = 0), and the wiring
of each method's full `loss()` against an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from methods.alignment import METHODS
from methods.alignment.base import ImageBatch, PairBatch
from methods.alignment.dpo import dpo_loss
from methods.alignment.inpo import inverted_noise
from methods.alignment.kto import kto_loss

SHAPE = (1, 4, 1, 1)


def per_sample_error(pred_value: float) -> torch.Tensor:
    """mean over (C, H, W) of (ε_θ − ε)² with ε = 0 and a constant prediction."""
    pred, eps = torch.full(SHAPE, pred_value), torch.zeros(SHAPE)
    return ((pred - eps) ** 2).mean(dim=(1, 2, 3))


def test_dpo_hand_value():
    # ε_θ^w = 1, ε_θ^l = 2, ε_ref = 1 for both, β = 2/3: Δθ = 1 − 4 = −3, Δref = 0, z = 1.
    loss, z = dpo_loss(per_sample_error(1.0), per_sample_error(2.0), per_sample_error(1.0), per_sample_error(1.0), 2 / 3)
    assert z.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), abs=1e-9)


def test_dpo_diffusers_form_has_half_the_beta():
    # diffusers' port: −log σ(β_d (Δref − Δθ)) with no ½, so β_d = 1/3 matches β = 2/3 here.
    diffusers_form = -torch.nn.functional.logsigmoid(torch.tensor((0.0 - (1.0 - 4.0)) * (1 / 3)))
    loss, _ = dpo_loss(per_sample_error(1.0), per_sample_error(2.0), per_sample_error(1.0), per_sample_error(1.0), 2 / 3)
    assert loss.item() == pytest.approx(diffusers_form.item(), abs=1e-7)


def test_noise_error_is_the_mean_not_the_sum_over_chw():
    """noise_mse averages (ε̂ − ε)² over (C, H, W), as Diffusion-DPO's `.mean(dim=list(range(1, ndim)))`:
    a prediction off by 1 in each of 4 channels x 2 x 2 pixels has error 1, not 16."""
    from methods.alignment.base import noise_mse

    class Constant:  # a backbone whose ε̂ is 1 everywhere
        device = torch.device("cpu")

        @staticmethod
        def eps(x_t, t, cond):
            return torch.ones_like(x_t)

    x_t = torch.zeros(3, 4, 2, 2)
    error = noise_mse(Constant(), x_t, torch.zeros(3, dtype=torch.long), None, torch.zeros_like(x_t))
    assert error.tolist() == [1.0, 1.0, 1.0]


def test_kto_hand_value():
    # Lθ = [1, 2], Lref = [1.5, 1.5], labels [desirable, undesirable], β = 2: g = [0.5, −0.5], z0 = 0.
    loss, z0 = kto_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]), torch.tensor([True, False]), 2.0)
    assert z0.item() == 0.0
    assert loss.item() == pytest.approx(0.268941, abs=1e-6)


def test_kto_reference_point_from_batch_mean():
    # Lθ = [1, 1], Lref = [2, 1.5], β = 4: g = [1, 0.5], z0 = 0.75, each term 1 − σ(1).
    loss, z0 = kto_loss(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.5]), torch.tensor([True, False]), 4.0)
    assert z0.item() == pytest.approx(0.75)
    assert loss.item() == pytest.approx(0.268941, abs=1e-6)


def test_kto_reference_point_is_clamped_and_detached():
    policy = torch.tensor([2.0, 3.0], requires_grad=True)
    loss, z0 = kto_loss(policy, torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 1.0)
    assert z0.item() == 0.0  # batch mean of g is −1.5, clamped at 0
    loss.backward()
    # With z0 detached, d loss / d policy_i = s_i β σ'(s_i β g_i) / B; check against that closed form.
    g = torch.tensor([-1.0, -2.0])
    sign = torch.tensor([1.0, -1.0])
    sig = torch.sigmoid(sign * g)
    expected = sign * sig * (1 - sig) / 2
    assert torch.allclose(policy.grad, expected, atol=1e-7)


def test_inpo_target_hand_value():
    eps_hat = inverted_noise(torch.ones(SHAPE), torch.ones(SHAPE), torch.tensor([0.25], dtype=torch.float64))
    assert eps_hat.flatten()[0].item() == pytest.approx(0.577350, abs=1e-6)


def _pair_batch(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *backbone.latent_shape)
    cond = backbone.encode_prompts(["a small red circle on the left, black background"] * n)
    return PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)


def test_dpo_loss_shares_t_and_noise_within_pairs(tiny_backbone):
    """DPO.loss == dpo_loss on errors recomputed by hand with the same random draws."""
    method = METHODS.get("dpo")(METHODS.get("dpo").Config(beta=100.0))
    batch = _pair_batch(tiny_backbone)
    out = method.loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(7))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: z = 0

    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(batch.winner.shape, generator=g)

    def err(backbone, x0):
        x_t = backbone.add_noise(x0, noise, t)
        return ((backbone.eps(x_t, t, batch.cond) - noise) ** 2).mean(dim=(1, 2, 3))

    torch.manual_seed(1)
    policy = tiny_backbone.with_unet(type(tiny_backbone.unet).from_config(tiny_backbone.unet.config).eval())
    out = method.loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))
    expected, _ = dpo_loss(err(policy, batch.winner), err(policy, batch.loser), err(tiny_backbone, batch.winner),
                           err(tiny_backbone, batch.loser), 100.0)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sft_and_kto_full_losses_match_recomputation(tiny_backbone):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn((4, *tiny_backbone.latent_shape), generator=g)
    cond = tiny_backbone.encode_prompts(["a large blue square in the center, gray background"] * 4)
    desirable = torch.tensor([True, False, True, False])
    batch = ImageBatch(latents, cond, desirable)

    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    x_t = tiny_backbone.add_noise(latents, noise, t)
    err = ((tiny_backbone.eps(x_t, t, cond) - noise) ** 2).mean(dim=(1, 2, 3))

    sft = METHODS.get("sft")().loss(batch, tiny_backbone, None, torch.Generator().manual_seed(5))
    assert sft.loss.item() == pytest.approx(err.mean().item(), rel=1e-6)

    kto = METHODS.get("kto")(METHODS.get("kto").Config(beta=10.0))
    out = kto.loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(5))
    expected, _ = kto_loss(err, err, desirable, 10.0)  # policy == reference: g = 0, each term 1 − σ(0) = 0.5
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-7) == pytest.approx(0.5)


def test_kto_sampling_weights_give_gamma_desirable():
    kto = METHODS.get("kto")()
    desirable = torch.tensor([True] * 3 + [False] * 7)
    weights = kto.sampling_weights(desirable)
    assert weights[desirable].sum().item() == pytest.approx(0.8)
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("name, expected", [("sft", 3), ("dpo", 8), ("kto", 4), ("inpo", 28)])
def test_declared_worst_case_nfe(name, expected):
    assert METHODS.get(name)().max_nfe_per_item() == expected


def test_method_configs_validate():
    with pytest.raises(ValueError, match="beta"):
        METHODS.get("dpo").Config(beta=0)
    with pytest.raises(ValueError, match="mode"):
        METHODS.get("inpo").Config(mode="fast")
    with pytest.raises(ValueError, match="faithful"):
        METHODS.get("inpo").Config(mode="faithful", inversion="bdia")
    assert METHODS.get("inpo").Config().resolved_mode == "faithful"
    assert METHODS.get("inpo").Config(inversion="bdia").resolved_mode == "exact"
    assert METHODS.get("inpo")(METHODS.get("inpo").Config(inversion="edict")).max_nfe_per_item() == 8 + 2 * 10 * 2
    with pytest.raises(KeyError, match="did you mean 'ddim'"):
        METHODS.get("inpo").Config(mode="exact", inversion="ddmi")
