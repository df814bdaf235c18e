"""`aesthetic`: the LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor),
a linear MLP on L2-normalised CLIP ViT-L/14 image embeddings, trained with MSE on 1-10 ratings
(SAC, LAION-Logos, AVA). The prompt is ignored.

.. math::  \\mathrm{aesthetic}(x) = \\mathrm{MLP}(E_I(x) / \\lVert E_I(x) \\rVert_2)

The head is `simple_inference.py`'s `MLP(768)`: Linear 768->1024, Dropout 0.2, Linear 1024->128,
Dropout 0.2, Linear 128->64, Dropout 0.1, Linear 64->16, Linear 16->1, with no activations (the
ReLUs are commented out there, hence "linearMSE"); dropout is inactive at inference. Checkpoint
`sac+logos+ava1-l14-linearMSE.pth` (from the GitHub repo, mirrored in the hub repo
`camenduru/improved-aesthetic-predictor`), a plain state dict loaded with `weights_only=True`.
Typical images score ~5-6.

The backbone is OpenAI's CLIP ViT-L/14 (`simple_inference.py` uses `clip.load("ViT-L/14")`), here
by default its transformers conversion `openai/clip-vit-large-patch14` (the same weights; DDPO's
aesthetic reward does the same), or any backbone string `metrics.clip_score` accepts with a 768-d
projection, e.g. "ViT-L-14:openai" (open_clip) or OpenAI's TorchScript `ViT-L-14.pt` via
`backbone="ViT-L-14", clip_weights=FILE`.

`weights=` is the head file, or a directory holding it (and, if it also holds a transformers
`config.json`, the CLIP ViT-L/14 model files too); `clip_weights=` an explicit backbone path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metrics.base import check_inputs, in_batches
from metrics.clip_score import ClipBackboneConfig, ClipBackboneScorer, backbone_specs, default_device, load_backbone
from metrics.weights import WeightSpec, load_state_dict

HEAD = WeightSpec("aesthetic", "camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth",
                  "LAION aesthetic predictor v2 head (christophschuhmann/improved-aesthetic-predictor)")
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"
EMBED_DIM = 768  # CLIP ViT-L/14 projection


class AestheticHead(nn.Module):
    """improved-aesthetic-predictor's `MLP`: same layer indices, so its state dict loads strictly."""

    def __init__(self, input_size: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 768) image embeddings (any norm) -> (N,) scores; normalises them first."""
        return self.layers(F.normalize(embeddings.float(), dim=-1)).squeeze(-1)


@dataclass(frozen=True)
class AestheticConfig(ClipBackboneConfig):
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={
        "help": "CLIP ViT-L/14 image tower (768-d projection): transformers id or directory, or open_clip NAME[:TAG] "
                "such as ViT-L-14:openai"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass"})


class AestheticScorer(ClipBackboneScorer, name="aesthetic", config=AestheticConfig, higher_is_better=True,
                      scale="LAION aesthetic rating, 1-10 (typical images ~5-6); prompt ignored"):
    """LAION aesthetic predictor v2: linear MLP on normalised CLIP ViT-L/14 image embeddings (1-10)."""

    def __init__(self, config: AestheticConfig | None = None, *, weights: str | Path | None = None,
                 allow_pickle: bool = False, clip_weights: str | Path | None = None, device: str | None = None,
                 **fields):
        super().__init__(config, **fields)
        head_path = self.locate_weights(HEAD, weights)
        if clip_weights is None and weights is not None and (Path(weights) / "config.json").is_file():
            clip_weights = weights  # the head's directory also holds the CLIP model
        device = device or default_device()
        self.backbone, backbone_files = load_backbone(self.config.backbone, scorer=self.name, weights=clip_weights,
                                                      allow_pickle=allow_pickle, locate=self.locate_weights,
                                                      device=device)
        self.head = AestheticHead()
        self.head.load_state_dict(load_state_dict(head_path, allow_pickle=allow_pickle))
        self.head.to(device).eval().requires_grad_(False)
        self.weight_files = [(HEAD, head_path), *backbone_files]

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return [HEAD, *backbone_specs(DEFAULT_BACKBONE, cls.name)]

    @torch.no_grad()
    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        check_inputs(prompts, images)
        return in_batches(self.config.batch_size, self._head_scores, images)

    def _head_scores(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone.image_features(images)  # (B, 768)
        if embeddings.shape[-1] != EMBED_DIM:
            raise ValueError(f"aesthetic head needs {EMBED_DIM}-d CLIP ViT-L/14 embeddings, backbone "
                             f"{self.backbone.name} gives {embeddings.shape[-1]}")
        return self.head(embeddings).cpu()
