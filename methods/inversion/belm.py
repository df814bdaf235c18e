"""O-BELM: the optimal second-order bidirectional explicit linear multistep sampler (Wang et al.,
"BELM: Bidirectional Explicit Linear Multi-step Sampler for Exact Inversion in Diffusion Models",
NeurIPS 2024; zituitui/BELM @aa09c5e, `samplers/BELM.py`).

With h_i = s_i/a_i − s_{i−1}/a_{i−1} (steps in σ̄ = s/a) and ε_i = ε̂(z_i, t_i), sampling from the
pair (z_{i+1}, z_i):

    z_{i−1} = (h_i²/h_{i+1}²)(a_{i−1}/a_{i+1}) z_{i+1} + ((h_{i+1}² − h_i²)/h_{i+1}²)(a_{i−1}/a_i) z_i
              − (h_i (h_i + h_{i+1}) / h_{i+1}) a_{i−1} ε_i

and its exact inverse:

    z_{i+1} = (h_{i+1}²/h_i²)(a_{i+1}/a_{i−1}) z_{i−1} + ((h_i² − h_{i+1}²)/h_i²)(a_{i+1}/a_i) z_i
              + (h_{i+1} (h_i + h_{i+1}) / h_i) a_{i+1} ε_i

In z̄ = z/a the weights on z̄_{i+1}, z̄_i sum to 1; the local truncation error is O((h_i + h_{i+1})³).
The first step of a path is a DDIM step, so the state is the pair (z_N, z_{N−1}) (`TwoStepSampler`).
Rounding errors grow by (h_{i+1}/h_i)² per inversion step, (h_N/h_1)² over the path.
Cost: one model call per step (N in inversion, N − 1 in reconstruction from the pair).

The coefficients are computed with a_{i+1} h_{i+1} = s_{i+1} − a_{i+1} σ̄_i in place of h_{i+1}, so the top of a flow
schedule (a = 0 at σ = 1, where σ̄ = ∞) is their limit: there the weight on z_{i+1} is 0 and the step is DDIM's,
z̄_{i−1} = z̄_i − h_i ε_i. Sampling from it is defined; inverting to it is not (its amplification (h_{i+1}/h_i)² is
infinite), and `invert` refuses a path that ends at σ = 1 (BDIA, whose weight on z_{i+1} is γ, inverts it exactly).
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone
from methods.inversion.base import NoSettings, StepCoefficients, TwoStepSampler


class OBELM(TwoStepSampler, name="belm", config=NoSettings):  # its coefficients follow from the level path alone
    def coefficients(self, backbone: Backbone, lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor) -> StepCoefficients:
        (a_lo, s_lo), (a_mid, s_mid), (a_hi, s_hi) = (backbone.noise_levels(level) for level in (lo, mid, hi))
        sigma_lo, sigma_mid = s_lo / a_lo, s_mid / a_mid  # σ̄ = s/a, below the top: a > 0
        h_mid = sigma_mid - sigma_lo  # h_i
        scaled_h_hi = s_hi - a_hi * sigma_mid  # a_{i+1} h_{i+1}, finite where σ̄_{i+1} = ∞ (a_{i+1} = 0)
        ratio = h_mid * a_hi / scaled_h_hi  # h_i / h_{i+1}
        c_hi = ratio * h_mid * a_lo / scaled_h_hi  # (h_i/h_{i+1})² a_{i−1}/a_{i+1}
        c_mid = (1 - ratio**2) * a_lo / a_mid
        return c_hi, c_mid, -h_mid * (1 + ratio) * a_lo  # −(h_i (h_i + h_{i+1}) / h_{i+1}) a_{i−1}
