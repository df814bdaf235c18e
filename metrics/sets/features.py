"""The feature spaces of the set metrics: a `FeatureBackbone` maps images to one vector each.

    features(images) -> (N, D) float32 on the CPU; images float RGB in [0, 1], (N, 3, H, W), any size (each
    backbone resizes as its model expects), computed `batch_size` images at a time.

- `Dinov2Features` (`key` "dinov2-vitl14"): DINOv2 ViT-L/14 (Oquab et al. 2023), the feature space Stein et al. 2023
  ("Exposing flaws of generative model evaluation metrics", layer6ai-labs/dgm-eval) recommend over Inception for FD and
  precision/recall. As dgm-eval's `DINOv2Encoder`: the image resized to 224 x 224 (bicubic, aspect not kept), ImageNet
  mean/std, and the feature is the CLS token after the final LayerNorm (1024-d; torch.hub DINOv2's `x_norm_clstoken`,
  transformers `Dinov2Model`'s `pooler_output`). dgm-eval loads the torch.hub model and resizes 8-bit PIL images;
  this loads the transformers port (`facebook/dinov2-large`) and resizes float tensors, so features agree with
  dgm-eval's up to resampling and position-embedding interpolation details (not measured here: no weights offline).
  Weights: a transformers model directory (config.json + model.safetensors), looked up as every scorer's are
  (`metrics.weights`): `--weights METRIC=DIR`, `$BENCH_WEIGHTS_DIR/METRIC/`, the Hugging Face cache; never downloaded
  by this code, never replaced.
- `ToyClipImageFeatures` (`key` "toy-clip-image"): the image tower of the shipped toy CLIP (`metrics.toy_clip`,
  `toy-clip.safetensors`), its projected 64-d image embedding (not normalised), the images preprocessed as the
  `toy-clip` scorer does. The toy world's stand-in for DINOv2, so the set metrics run offline with real numbers; the
  metrics on it are named `*-toyclip`, never DINOv2.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from metrics.base import default_device, in_batches, weight_record
from metrics.clip_score import locate_clip_weights
from metrics.toy_clip import ToyClipScorer, load_toy_clip, toy_backbone
from metrics.weights import WeightSpec

DINOV2_REPO = "facebook/dinov2-large"  # ViT-L/14: dgm-eval's default architecture (`vitl14`)
DINOV2_SIZE = 224  # dgm-eval: TF.Resize((224, 224), BICUBIC)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureBackbone(ABC):
    """One model that maps images to feature vectors (module docstring). Built with the name of the metric that asked
    for it (`metric`: missing-weight messages name its `--weights METRIC=DIR`) and an explicit weights path or None."""

    key: ClassVar[str]  # what the features are, e.g. "dinov2-vitl14": metrics on the same key share one pass
    weight_files: list[tuple[WeightSpec, Path]]

    def __init__(self, *, batch_size: int = 32):
        self.batch_size = batch_size

    @classmethod
    @abstractmethod
    def weight_spec(cls, metric: str) -> WeightSpec:
        """The weights this backbone loads, as `metric` asks for them."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """One batch: (B, 3, H, W) float RGB in [0, 1] -> (B, D) float32 on the CPU."""

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> (N, D), `batch_size` images per model call, without gradients."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
        return in_batches(self.batch_size, self.embed, images)

    def describe(self) -> dict:
        """What the features are, and each weight file's path and SHA256."""
        return {"features": self.key, **self.details(),
                "weights": [weight_record(spec, path) for spec, path in self.weight_files]}

    def details(self) -> dict:
        return {}


def load_dinov2(path: str | Path):
    """A transformers `Dinov2Model` from a model directory, in eval mode; ValueError if the directory holds another
    kind of model or the checkpoint leaves any weight uninitialised (a random weight would be a faked feature)."""
    from transformers import Dinov2Model

    path = Path(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{path}: config.json names a {model_type!r} model, not 'dinov2'")
    model, info = Dinov2Model.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"] or info.get("mismatched_keys"):
        raise ValueError(f"{path}: the checkpoint lacks {sorted(info['missing_keys'])[:5]} "
                         f"(mismatched: {info.get('mismatched_keys', [])[:5]}); refusing randomly initialised weights")
    return model.eval().requires_grad_(False)


def dinov2_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, 224, 224): resized as dgm-eval does (bicubic, antialiased, aspect not kept),
    clamped as 8-bit images saturate, ImageNet-normalised."""
    x = images.float()
    if tuple(x.shape[-2:]) != (DINOV2_SIZE, DINOV2_SIZE):
        x = F.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


class Dinov2Features(FeatureBackbone):
    """DINOv2 ViT-L/14 CLS features (module docstring)."""

    key = "dinov2-vitl14"

    def __init__(self, *, metric: str, weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = 32):
        super().__init__(batch_size=batch_size)
        spec = self.weight_spec(metric)
        path = locate_clip_weights(spec, weights)  # a transformers model directory, config.json required
        self.device = torch.device(device or default_device())
        self.model = load_dinov2(path).to(self.device)
        self.weight_files = [(spec, path)]

    @classmethod
    def weight_spec(cls, metric: str) -> WeightSpec:
        return WeightSpec(metric, DINOV2_REPO, None, "DINOv2 ViT-L/14, transformers Dinov2Model directory")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=dinov2_pixels(images.to(self.device))).pooler_output.float().cpu()  # (B, 1024)

    def details(self) -> dict:
        return {"model": DINOV2_REPO, "feature": "CLS token after the final LayerNorm (pooler_output)",
                "dim": self.model.config.hidden_size,
                "preprocess": {"size": DINOV2_SIZE, "interpolation": "bicubic", "keep_aspect": False,
                               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}


class ToyClipImageFeatures(FeatureBackbone):
    """The toy CLIP's projected image embedding (module docstring)."""

    key = "toy-clip-image"

    def __init__(self, *, metric: str, weights: str | Path | None = None, batch_size: int = 256):
        super().__init__(batch_size=batch_size)
        spec = self.weight_spec(metric)
        path = ToyClipScorer.locate_weights(spec, weights)  # the toy-clip scorer's lookup, the shipped file last
        model, architecture, _ = load_toy_clip(path)
        self.backbone = toy_backbone(model, architecture, "toy-clip image tower")  # on the CPU, as the toy scorers
        self.weight_files = [(spec, path)]

    @classmethod
    def weight_spec(cls, metric: str) -> WeightSpec:
        return dataclasses.replace(ToyClipScorer.weight_specs()[0], scorer=metric)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.image_features(images).cpu()  # (B, 64)

    def details(self) -> dict:
        return {"model": "toy-clip image tower (metrics.toy_clip)", "feature": "projected image embedding",
                **self.backbone.describe()}
