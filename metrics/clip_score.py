"""`clip`: CLIP score, 100 * max(cos(image, text), 0) per image, with a selectable CLIP backbone.

.. math::  \\mathrm{CLIPScore}(x, c) = 100 \\cdot \\max(\\cos(E_I(x), E_T(c)), 0)

E_I, E_T are the projected CLIP image and text embeddings. This is torchmetrics'
`CLIPScore` (`functional/multimodal/clip_score.py`: 100 * cosine, default backbone
`openai/clip-vit-large-patch14`) with the clamp applied per image instead of after the mean.
Hessel et al. 2021 (CLIPScore) weight by 2.5 instead of 100 and use ViT-B/32; papers differ, so the
backbone and the scale go into every record (`describe()`).

Backbones (`backbone=`):
- a transformers model id or local model directory, e.g. "openai/clip-vit-large-patch14" (default):
  `CLIPModel`; the preprocessing of the directory's `preprocessor_config.json`, else CLIP's
  (short side -> 224 bicubic, centre crop, OpenAI mean/std);
- an open_clip model name, optionally with a pretrained tag: "ViT-B-32:openai" (the file comes from
  the tag's hub repo, or from `weights=`), or "ViT-B-32" with `weights=FILE` (a state dict, or
  OpenAI's TorchScript `ViT-B-32.pt`).

The text side uses CLIP's BPE tokenizer (`bench.core.clip_bpe`, ids equal to OpenAI's and LAION's) for
transformers backbones and open_clip's tokenizer for open_clip ones, truncated to the context length.

This module also holds what the CLIP-based scorers share (`ClipBackbone`, `ClipPreprocess`): the
PickScore, aesthetic and toy scorers use it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from metrics.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    BatchedScorerConfig,
    MissingWeightsError,
    Scorer,
    check_inputs,
    default_device,
    in_batches,
)
from metrics.weights import WeightSpec, load_state_dict

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"  # torchmetrics' default


@dataclass(frozen=True)
class ClipPreprocess:
    """CLIP's image preprocessing on tensors: short side -> `size` (bicubic, antialiased; long side
    int(size * long / short) as transformers and torchvision compute it), centre crop to size x size,
    clamp to [0, 1] (as 8-bit PIL images saturate), normalise with `mean`/`std`.

    transformers' `CLIPImageProcessor` does the same on 8-bit PIL images; results agree to within
    the 8-bit rounding of the interpolated pixels.
    """

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> (N, 3, size, size) normalised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.float()
        h, w = x.shape[-2:]
        if min(h, w) != self.size:
            short, long = min(h, w), max(h, w)
            new_long = int(self.size * long / short)
            new_h, new_w = (self.size, new_long) if h <= w else (new_long, self.size)
            x = F.interpolate(x, size=(new_h, new_w), mode=self.interpolation, align_corners=False,
                              antialias=self.interpolation in ("bilinear", "bicubic"))
            h, w = new_h, new_w
        top, left = (h - self.size) // 2, (w - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size].clamp(0, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std

    @classmethod
    def from_hf_config(cls, path: str | Path) -> ClipPreprocess:
        """From a transformers `preprocessor_config.json` (size, crop size, mean, std, resample)."""
        cfg = json.loads(Path(path).read_text())
        crop = cfg.get("crop_size", cfg.get("size", 224))
        crop = crop if isinstance(crop, int) else crop.get("height", crop.get("shortest_edge", 224))
        resize = cfg.get("size", crop)
        resize = resize if isinstance(resize, int) else resize.get("shortest_edge", crop)
        if resize != crop:
            raise ValueError(f"{path}: resize to {resize} then crop {crop} is not supported (CLIP uses equal sizes)")
        modes = {2: "bilinear", 3: "bicubic"}  # PIL resample codes
        return cls(size=int(crop), mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
                   std=tuple(cfg.get("image_std", OPENAI_STD)), interpolation=modes.get(cfg.get("resample", 3), "bicubic"))


def projected(output) -> torch.Tensor:
    """The projected embedding of `CLIPModel.get_{image,text}_features`: transformers 5 returns a
    `BaseModelOutputWithPooling` whose `.pooler_output` holds the projection; transformers 4 a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) and (N, D): (N,)."""
    return (F.normalize(image_features.float(), dim=-1) * F.normalize(text_features.float(), dim=-1)).sum(-1)


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """100 * max(cos, 0) per row (N,)."""
    return 100 * cosine(image_features, text_features).clamp(min=0)


class ClipBackbone:
    """One CLIP model (transformers `CLIPModel` or open_clip `CLIP`) behind one interface:
    projected image and text features, batched, and the model's learned logit scale (log)."""

    def __init__(self, model: torch.nn.Module, kind: str, tokenizer, preprocess: ClipPreprocess, context_length: int,
                 name: str, device: str | torch.device = "cpu"):
        if kind not in ("transformers", "open_clip"):
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.model = model.to(device).eval().requires_grad_(False)
        self.kind, self.tokenizer, self.preprocess = kind, tokenizer, preprocess
        self.context_length, self.name, self.device = context_length, name, torch.device(device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> (N, D) projected, not normalised; differentiable in the pixels where
        gradients are enabled (reward backpropagation), so evaluation calls it under `torch.no_grad`."""
        pixels = self.preprocess(images.to(self.device))
        if self.kind == "transformers":
            return projected(self.model.get_image_features(pixel_values=pixels)).float()
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """N prompts -> (N, D) projected, not normalised (truncated to the context length)."""
        if self.kind == "transformers":
            tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.context_length,
                                    return_tensors="pt").to(self.device)
            return projected(self.model.get_text_features(input_ids=tokens.input_ids,
                                                          attention_mask=tokens.attention_mask)).float()
        return self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float()

    @property
    def logit_scale(self) -> torch.Tensor:
        """log of the temperature-inverse; `logit_scale.exp()` is ~100 for trained CLIPs."""
        return self.model.logit_scale.detach().float()

    def describe(self) -> dict:
        return {"backbone": self.name, "backbone_kind": self.kind, "context_length": self.context_length,
                "preprocess": {"size": self.preprocess.size, "interpolation": self.preprocess.interpolation,
                               "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)}}

    @classmethod
    def from_transformers_dir(cls, path: str | Path, *, scorer: str, preprocess: ClipPreprocess | None = None,
                              name: str | None = None, device: str | torch.device = "cpu") -> ClipBackbone:
        """A transformers `CLIPModel` directory (config.json + weights); tokenizer: CLIP's BPE."""
        from transformers import CLIPModel

        from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{scorer}: {path} is not a transformers model directory (no config.json); "
                                      f"pass --weights {scorer}=DIR with the model's config.json and weights")
        model = CLIPModel.from_pretrained(str(path), dtype=torch.float32)
        text = model.config.text_config
        if text.vocab_size != CLIP_VOCAB_SIZE:
            raise ValueError(f"{path}: text vocabulary of {text.vocab_size} tokens is not CLIP's BPE ({CLIP_VOCAB_SIZE})")
        if preprocess is None:
            config = path / "preprocessor_config.json"
            preprocess = (ClipPreprocess.from_hf_config(config) if config.is_file()
                          else ClipPreprocess(size=model.config.vision_config.image_size))
        length = text.max_position_embeddings
        return cls(model, "transformers", clip_bpe_tokenizer(length), preprocess, length, name or str(path), device)


def locate_clip_weights(spec: WeightSpec, explicit: str | Path | None = None) -> Path:
    """`metrics.weights.resolve`, and a model directory must hold a transformers `config.json`:
    `$BENCH_WEIGHTS_DIR/<scorer>` holding only other files (say the aesthetic head) falls through to
    the hub cache."""
    from metrics.weights import WEIGHTS_ENV, resolve

    path = resolve(spec, explicit)
    if spec.filename is not None or (path / "config.json").is_file():
        return path
    if explicit is None:
        cached = _hub_snapshot(spec.repo)
        if cached is not None and (cached / "config.json").is_file():
            return cached
    raise MissingWeightsError(
        f"{spec.scorer}: {path} holds no transformers model (config.json) of {spec.repo!r}. Get it from the hub "
        f"repo {spec.repo!r} (`huggingface-cli download {spec.repo} --local-dir DIR`), then pass "
        f"--weights {spec.scorer}=DIR or set {WEIGHTS_ENV}=DIR (model files in DIR/{spec.scorer}/).")


def _hub_snapshot(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an invalid repo id
        return None


def is_open_clip_name(backbone: str) -> bool:
    """"ViT-B-32" or "ViT-B-32:openai" (an open_clip architecture), as opposed to a hub id or a path."""
    import open_clip

    return backbone.split(":", 1)[0] in open_clip.list_models()


def backbone_specs(backbone: str, scorer: str) -> list[WeightSpec]:
    """The weight files a backbone string needs (none for a local path)."""
    if is_open_clip_name(backbone):
        name, _, tag = backbone.partition(":")
        if not tag:
            return []
        hub = _open_clip_hub(name, tag)
        return [WeightSpec(scorer, hub[0], hub[1], f"open_clip {name} weights, pretrained tag {tag!r}")]
    if Path(backbone).exists():
        return []
    return [WeightSpec(scorer, backbone, None, "transformers CLIPModel directory")]


def _open_clip_hub(name: str, tag: str) -> tuple[str, str]:
    """(hub repo, file) of an open_clip pretrained tag; open_clip prefers the safetensors file."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = [t for n, t in open_clip.list_pretrained() if n == name]
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {name}; known: {', '.join(tags) or 'none'}")
    if not cfg.get("hf_hub"):
        raise ValueError(f"open_clip {name}:{tag} is not on the hub; download it and pass --weights NAME=FILE")
    repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" (default file) or "org/repo/file", as open_clip
    return repo, filename or "open_clip_model.safetensors"


def load_backbone(backbone: str, *, scorer: str, weights: str | Path | None = None, allow_pickle: bool = False,
                  locate=None, device: str | torch.device = "cpu") -> tuple[ClipBackbone, list[tuple[WeightSpec, Path]]]:
    """A `ClipBackbone` from a backbone string (see the module docstring) and the files it loaded.

    `weights` is an explicit local path: a transformers model directory, or an open_clip weights file.
    `locate(spec, explicit)` finds a spec's file (default: `locate_clip_weights`).
    """
    locate = locate or locate_clip_weights
    if is_open_clip_name(backbone):
        return _load_open_clip(backbone, scorer=scorer, weights=weights, allow_pickle=allow_pickle, locate=locate,
                               device=device)
    spec = WeightSpec(scorer, backbone, None, "transformers CLIPModel directory")
    if weights is None and Path(backbone).is_dir():
        path = Path(backbone)
    else:
        path = locate(spec, weights)
    return ClipBackbone.from_transformers_dir(path, scorer=scorer, name=backbone, device=device), [(spec, path)]


def _load_open_clip(backbone: str, *, scorer: str, weights, allow_pickle: bool, locate, device):
    import open_clip

    name, _, tag = backbone.partition(":")
    cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    if weights is None and not tag:
        raise MissingWeightsError(
            f"{scorer}: open_clip backbone {name!r} needs a pretrained tag (e.g. {name}:openai) or a weights file "
            f"(--weights {scorer}=FILE)")
    if weights is not None:
        spec = WeightSpec(scorer, backbone, Path(weights).name if Path(weights).is_file() else None,
                          f"open_clip {name} weights")
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"{scorer}: open_clip weights file {path} not found; pass --weights {scorer}=FILE")
    else:
        repo, filename = _open_clip_hub(name, tag)
        spec = WeightSpec(scorer, repo, filename, f"open_clip {name} weights, pretrained tag {tag!r}")
        try:
            path = locate(spec, None)
        except MissingWeightsError:
            if not filename.endswith(".safetensors"):
                raise
            try:  # older snapshots only hold the pickled state dict
                alternative = WeightSpec(scorer, repo, "open_clip_pytorch_model.bin", spec.description)
                path, spec = locate(alternative, None), alternative
            except MissingWeightsError:
                path = locate(spec, None)  # re-raise, naming the preferred file
    if _is_torchscript(path):  # OpenAI's original ViT-*.pt archives
        model = open_clip.load_openai_model(str(path), device="cpu")
    else:
        preprocess_cfg = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")),
                                       force_preprocess_cfg=preprocess_cfg or None)
        state = load_state_dict(path, allow_pickle=allow_pickle)
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    preprocess = ClipPreprocess(size=size if isinstance(size, int) else size[0], mean=tuple(pp.get("mean", OPENAI_MEAN)),
                                std=tuple(pp.get("std", OPENAI_STD)), interpolation=pp.get("interpolation", "bicubic"))
    tokenizer = open_clip.get_tokenizer(name)
    context = getattr(model, "context_length", 77)
    return ClipBackbone(model, "open_clip", tokenizer, preprocess, context, backbone, device), [(spec, path)]


def _is_torchscript(path: Path) -> bool:
    if path.suffix not in (".pt", ".pth") or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") for n in archive.namelist())


def batched_features(backbone: ClipBackbone, prompts: list[str], images: torch.Tensor,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features, text features), each (N, D), computed `batch_size` at a time."""
    check_inputs(prompts, images)

    def features(part_prompts: list[str], part_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return backbone.image_features(part_images).cpu(), backbone.text_features(part_prompts).cpu()

    return in_batches(batch_size, features, prompts, images)


class ClipBackboneScorer(Scorer):
    """A scorer on a `ClipBackbone`, `self.backbone` (set by the subclass's `__init__`): its weights are looked up as
    CLIP weights are (`locate_clip_weights`), its features computed `config.batch_size` images at a time, and its
    description includes the backbone's."""

    backbone: ClipBackbone

    @classmethod
    def locate_weights(cls, spec: WeightSpec, explicit: str | Path | None = None) -> Path:
        return locate_clip_weights(spec, explicit)

    def features(self, prompts: list[str], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image features, text features), each (N, D) (`batched_features`)."""
        return batched_features(self.backbone, prompts, images, self.config.batch_size)

    def describe(self) -> dict:
        return {**super().describe(), **self.backbone.describe()}


class ClipBackboneConfig(BatchedScorerConfig):
    """Base of the Config of a scorer on a CLIP backbone (`ClipBackboneScorer`): the subclass declares `backbone` and
    `batch_size` with its own defaults and help text; this checks both."""

    backbone: str  # as `batch_size`: the subclass's declaration makes the field

    def __post_init__(self):
        if not self.backbone:
            raise ValueError("backbone must name a CLIP model")
        super().__post_init__()


@dataclass(frozen=True)
class ClipScoreConfig(ClipBackboneConfig):
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={
        "help": "CLIP model: transformers id or directory, or open_clip NAME[:TAG] such as ViT-B-32:openai "
                "(default: torchmetrics' ViT-L/14)"})
    batch_size: int = field(default=32, metadata={"help": "images (and prompts) per forward pass"})


class ClipScorer(ClipBackboneScorer, name="clip", config=ClipScoreConfig, higher_is_better=True,
                 scale="100 x max(cos(image, text), 0), in [0, 100]"):
    """CLIP score: 100 * max(cos(image, text), 0) per image; backbone selectable (default ViT-L/14)."""

    def __init__(self, config: ClipScoreConfig | None = None, *, weights: str | Path | None = None,
                 allow_pickle: bool = False, device: str | None = None, **fields):
        super().__init__(config, **fields)
        self.backbone, self.weight_files = load_backbone(
            self.config.backbone, scorer=self.name, weights=weights, allow_pickle=allow_pickle,
            locate=self.locate_weights, device=device or default_device())
        self.scale = f"100 x max(cos(image, text), 0), in [0, 100], backbone {self.config.backbone}"

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return backbone_specs(DEFAULT_BACKBONE, cls.name)

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return clip_score(*self.features(prompts, images))
