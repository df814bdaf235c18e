"""`pickscore`: PickScore v1 (Kirstain et al. 2023, "Pick-a-Pic: An Open Dataset of User Preferences
for Text-to-Image Generation"), a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

.. math::  \\mathrm{PickScore}(x, c) = \\exp(s) \\cdot \\cos(E_I(x), E_T(c))

with s the model's learned `logit_scale` (exp(s) ~ 100), as in the model card's `calc_probs`
(yuvalkirstain/PickScore README: `model.logit_scale.exp() * (text_embs @ image_embs.T)` on
L2-normalised embeddings). Real images score ~20-23. Some wrappers (t2v_metrics) drop exp(s) and
report cosines ~0.2: this scorer keeps it. A softmax of these scores over one prompt's images gives
PickScore's preference probabilities.

Weights: the transformers model directory of `yuvalkirstain/PickScore_v1` (3.9 GB; `--weights
pickscore=DIR`). Preprocessing is that of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`'s processor (short
side -> 224 bicubic, centre crop 224, OpenAI mean/std), read from its `preprocessor_config.json` when
found (in DIR, `$BENCH_WEIGHTS_DIR` or the hub cache), else built from those documented values. Text:
CLIP's BPE (49,408 tokens, the laion tokenizer's ids) truncated to 77 tokens; the laion tokenizer
pads with another id, which does not reach the EOS-pooled embedding under CLIP's causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from metrics.base import BatchedScorerConfig, MissingWeightsError
from metrics.clip_score import ClipBackbone, ClipBackboneScorer, ClipPreprocess, cosine, default_device
from metrics.weights import WeightSpec

MODEL = WeightSpec("pickscore", "yuvalkirstain/PickScore_v1", None,
                   "CLIP ViT-H/14 fine-tuned on Pick-a-Pic (transformers model directory, 3.9 GB)")
PROCESSOR = WeightSpec("pickscore", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "preprocessor_config.json",
                       "PickScore's image processor; optional: the same values are built in")
TEXT_TOKENS = 77
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config.json (PickScore_v1 fine-tunes that model; same shapes): 986 M parameters
CLIP_H_CONFIG = {
    "projection_dim": 1024,
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 1024},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16, "num_hidden_layers": 32,
                      "patch_size": 14, "image_size": 224, "hidden_act": "gelu", "projection_dim": 1024},
}


def pickscore(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) * cos per row (N,)."""
    return logit_scale.exp() * cosine(image_features, text_features)


@dataclass(frozen=True)
class PickScoreConfig(BatchedScorerConfig):
    batch_size: int = field(default=16, metadata={"help": "images (and prompts) per forward pass"})


class PickScoreScorer(ClipBackboneScorer, name="pickscore", config=PickScoreConfig, higher_is_better=True,
                      differentiable=True,
                      scale="exp(logit_scale) x cos(image, text), logit_scale.exp() ~ 100; real images ~20-23"):
    """PickScore v1: exp(logit_scale) * cos(image, text) of a CLIP-H fine-tuned on Pick-a-Pic (~20-23)."""

    def __init__(self, config: PickScoreConfig | None = None, *, weights: str | Path | None = None,
                 device: str | None = None, **fields):
        super().__init__(config, **fields)
        model_dir = self.locate_weights(MODEL, weights)
        self.weight_files = [(MODEL, model_dir)]
        preprocess = ClipPreprocess(size=224)  # the laion processor's values
        for explicit in ([weights] if weights is not None and Path(weights).is_dir() else []) + [None]:
            try:
                config = self.locate_weights(PROCESSOR, explicit)
            except MissingWeightsError:
                continue
            preprocess = ClipPreprocess.from_hf_config(config)
            self.weight_files.append((PROCESSOR, config))
            break
        self.backbone = ClipBackbone.from_transformers_dir(model_dir, scorer=self.name, preprocess=preprocess,
                                                           name=MODEL.repo, device=device or default_device())
        self.backbone.context_length = min(self.backbone.context_length, TEXT_TOKENS)

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return [MODEL, PROCESSOR]

    @classmethod
    def from_config(cls, clip_config: dict | None = None, *, seed: int = 0, batch_size: int = 16,
                    device: str | torch.device | None = "cpu") -> PickScoreScorer:
        """Random weights (seeded), built on `device`, on a transformers `CLIPConfig` dict (default PickScore's CLIP-H,
        `CLIP_H_CONFIG`): the scoring path without the checkpoint (throughput checks, tests)."""
        from transformers import CLIPConfig, CLIPModel

        from bench.core.clip_bpe import clip_bpe_tokenizer

        torch.manual_seed(seed)
        config = CLIPConfig.from_dict(clip_config if clip_config is not None else CLIP_H_CONFIG)
        with torch.device(device or default_device()):
            model = CLIPModel(config)
        scorer = cls.__new__(cls)
        scorer.config, scorer.weight_files = PickScoreConfig(batch_size=batch_size), []
        length = min(config.text_config.max_position_embeddings, TEXT_TOKENS)
        scorer.backbone = ClipBackbone(model, "transformers", clip_bpe_tokenizer(length),
                                       ClipPreprocess(size=config.vision_config.image_size), length,
                                       "random weights", device or default_device())
        return scorer

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return pickscore(*self.features(prompts, images), self.backbone.logit_scale.cpu())

    def describe(self) -> dict:
        return {**super().describe(), "logit_scale_exp": float(self.backbone.logit_scale.exp())}
