"""`imagereward`: ImageReward v1.0 (Xu et al. 2023), batched, on transformers' BLIP modules.

    r(prompt, image) = MLP(BERT_x(tokens(prompt), ViT(image))[CLS]),   score = (r - 0.16717362830052426) / 1.0333394966054072

- ViT: BLIP's ViT-L/16 at 224 (24 blocks, width 1024, pre-norm, final LayerNorm, eps 1e-6), all 197 output
  tokens; preprocessing `Resize(224, bicubic)` (short side) + `CenterCrop(224)` + OpenAI mean/std.
- BERT_x: BLIP's BERT-base text encoder (12 layers, 768, 12 heads, vocabulary 30,524 = bert-base-uncased +
  `[DEC]`, `[ENC]`), bidirectional self-attention over the prompt, cross-attention to the image tokens in
  every layer; prompt tokens truncated and padded to 35 (`max_length=35`: longer prompts are cut).
- MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, linear layers only (the reference comments out its ReLUs;
  dropouts 0.2, 0.2, 0.1 are off at evaluation), then the standardisation above (constants from the reference).

Reference: THUDM/ImageReward @c1392c6, `ImageReward/ImageReward.py` (`ImageReward.score`, `MLP`,
`_transform`) and `ImageReward/models/BLIP/{blip_pretrain,med,vit}.py`; weights `ImageReward.pt` in the hub
repo `THUDM/ImageReward` (a plain state dict, `blip.*` and `mlp.*`).

Mapping onto transformers (checked against `image-reward` 1.5 by `tests/refcheck`):
- BLIP's timm-style `VisionTransformer` is `BlipVisionModel`: same fused qkv attention, pre-norm blocks,
  exact GELU; its `norm` is `post_layernorm` (the key map renames timm's names);
- BLIP's `med.BertModel` is `BlipTextModel` (transformers ported it from the same file: no token-type
  embeddings, cross-attention after self-attention in every layer). The config must say `is_decoder=True` so
  that the cross-attention layers exist; the forward runs with `is_decoder=False`, i.e. bidirectional
  self-attention as ImageReward's `mode='multimodal'`. The BERT parameter names are the same.
- The ITC projections (`blip.vision_proj`, `blip.text_proj`) and the `position_ids` buffer of the checkpoint
  are unused and dropped; any other key that does not map, or a parameter left without a value, raises.

The reward is computed on 8-bit images, as the reference computes it from saved files: floats in [0, 1] are
rounded to uint8 (as diffusers saves images), then resized with PIL's bicubic filter (what torchvision's
`Resize` does on a PIL image).

Files: `ImageReward.pt` and `med_config.json` (the text encoder's BERT config; BLIP overwrites its
`encoder_width` with the ViT width, and so do we) from `THUDM/ImageReward`, and bert-base-uncased's `vocab.txt`.
The ViT is not in `med_config.json`: ImageReward fixes it (`BLIP_Pretrain(image_size=224, vit='large')`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from metrics.base import OPENAI_MEAN, OPENAI_STD, BatchedScorerConfig, Scorer, check_inputs, default_device, in_batches
from metrics.weights import WeightSpec, load_state_dict

IMAGEREWARD_REPO = "THUDM/ImageReward"
REWARD_MEAN = 0.16717362830052426  # ImageReward.py: self.mean
REWARD_STD = 1.0333394966054072  # ImageReward.py: self.std
MAX_TEXT_TOKENS = 35  # ImageReward.py: tokenizer(..., padding='max_length', truncation=True, max_length=35)
MLP_WIDTHS = (1024, 128, 64, 16, 1)  # ImageReward.py: MLP
MLP_DROPOUTS = (0.2, 0.2, 0.1)  # after the first three linear layers
BERT_VOCAB_SIZE = 30522  # bert-base-uncased vocab.txt


BLIP_VIT_LARGE = dict(image_size=224, patch_size=16, vision_width=1024, vision_layers=24, vision_heads=16)  # blip.py create_vit
# med_config.json keys -> ImageRewardArchitecture fields (the rest of the file: dropouts, init range, type vocabulary)
MED_CONFIG_FIELDS = {"hidden_size": "text_width", "num_hidden_layers": "text_layers", "num_attention_heads": "text_heads",
                     "intermediate_size": "text_intermediate", "vocab_size": "vocab_size",
                     "max_position_embeddings": "max_position_embeddings", "layer_norm_eps": "text_layer_norm_eps"}


@dataclass(frozen=True)
class ImageRewardArchitecture:
    """Sizes of ImageReward's BLIP: defaults are v1.0 (ViT-L/16 at 224 + BERT-base); tests shrink them."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = BERT_VOCAB_SIZE + 2  # + BLIP's [DEC] and [ENC]
    max_position_embeddings: int = 512
    text_layer_norm_eps: float = 1e-12

    @classmethod
    def from_med_config(cls, med_config: dict, vision: dict | None = None) -> ImageRewardArchitecture:
        """The architecture a BLIP `med_config.json` describes, on BLIP's ViT-L/16 (or `vision`, same keys as
        `BLIP_VIT_LARGE`). Raises ValueError on a config this module cannot build exactly."""
        missing = [key for key in MED_CONFIG_FIELDS if key not in med_config]
        problems = [f"missing {', '.join(missing)}"] if missing else []
        if not med_config.get("add_cross_attention", False):
            problems.append("add_cross_attention is not true (ImageReward's text encoder cross-attends to the image)")
        if med_config.get("hidden_act", "gelu") != "gelu":
            problems.append(f"hidden_act {med_config['hidden_act']!r} (only 'gelu' is mapped)")
        if med_config.get("position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type {med_config['position_embedding_type']!r}")
        if problems:
            raise ValueError(f"med_config.json: {'; '.join(problems)}")
        text = {field: med_config[key] for key, field in MED_CONFIG_FIELDS.items()}
        return cls(**(BLIP_VIT_LARGE if vision is None else vision), **text)

    def vision_config(self) -> BlipVisionConfig:
        return BlipVisionConfig(
            hidden_size=self.vision_width, intermediate_size=4 * self.vision_width, num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads, image_size=self.image_size, patch_size=self.patch_size,
            hidden_act="gelu", layer_norm_eps=1e-6,  # BLIP vit.py: nn.GELU, partial(nn.LayerNorm, eps=1e-6)
            initializer_range=0.02)

    def text_config(self) -> BlipTextConfig:
        return BlipTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.text_width, encoder_hidden_size=self.vision_width,
            intermediate_size=self.text_intermediate, num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads, max_position_embeddings=self.max_position_embeddings,
            hidden_act="gelu", layer_norm_eps=self.text_layer_norm_eps, pad_token_id=0,
            bos_token_id=None, eos_token_id=None, sep_token_id=None,  # decoding ids, unused by the encoder
            is_decoder=True)  # builds the cross-attention layers; forward() still runs bidirectionally


class RewardMLP(nn.Module):
    """ImageReward's head: linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts, no activations."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        widths = (in_features, *MLP_WIDTHS)
        layers: list[nn.Module] = []
        for i in range(len(MLP_WIDTHS)):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(MLP_DROPOUTS):
                layers.append(nn.Dropout(MLP_DROPOUTS[i]))
        self.layers = nn.Sequential(*layers)  # indices 0, 2, 4, 6, 7 are the linear layers, as in the checkpoint
        for name, param in self.layers.named_parameters():  # ImageReward.py MLP.__init__
            if name.endswith("weight"):
                nn.init.normal_(param, mean=0.0, std=1.0 / (in_features + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageRewardModel(nn.Module):
    """pixels (N, 3, S, S) normalised, prompt tokens (N, 35) -> standardised reward (N,)."""

    def __init__(self, arch: ImageRewardArchitecture = ImageRewardArchitecture()):
        super().__init__()
        self.arch = arch
        self.vision = BlipVisionModel(arch.vision_config())
        self.text = BlipTextModel(arch.text_config(), add_pooling_layer=False)
        self.mlp = RewardMLP(arch.text_width)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state  # (N, 1 + patches, Dv)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
                         is_decoder=False).last_hidden_state  # (N, 35, Dt); every image token is attended
        reward = self.mlp(text[:, 0].float()).squeeze(-1)  # [CLS] -> (N,)
        return (reward - REWARD_MEAN) / REWARD_STD


# The checkpoint's names (BLIP/timm) -> ours (transformers); {placeholders} match the same text on both sides.
KEY_MAP = [
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.{p}", "vision.embeddings.patch_embedding.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm1.{p}", "vision.encoder.layers.{i}.layer_norm1.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.{p}", "vision.encoder.layers.{i}.self_attn.qkv.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.proj.{p}", "vision.encoder.layers.{i}.self_attn.projection.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm2.{p}", "vision.encoder.layers.{i}.layer_norm2.{p}"),
    ("blip.visual_encoder.blocks.{i}.mlp.{fc}.{p}", "vision.encoder.layers.{i}.mlp.{fc}.{p}"),
    ("blip.visual_encoder.norm.{p}", "vision.post_layernorm.{p}"),
    ("blip.text_encoder.{bert}", "text.{bert}"),  # med.BertModel and BlipTextModel share BERT's names
    ("mlp.layers.{i}.{p}", "mlp.layers.{i}.{p}"),
]
# In the checkpoint but not used by the reward: dropped when present.
UNUSED_KEYS = ["blip.text_encoder.embeddings.position_ids", "blip.vision_proj.{p}", "blip.text_proj.{p}"]
_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "fc": r"fc1|fc2", "bert": r"[\w.]+"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    regex = "".join(re.escape(part) if k % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
                    for k, part in enumerate(parts))
    return re.compile(regex)


_FORWARD = [(_pattern(src), dst) for src, dst in KEY_MAP]
_BACKWARD = [(_pattern(dst), src) for src, dst in KEY_MAP]
_UNUSED = [_pattern(key) for key in UNUSED_KEYS]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        if match := pattern.fullmatch(key):
            return template.format(**match.groupdict())
    return None


class ImageRewardKeyError(ValueError):
    """A checkpoint whose keys do not map one-to-one onto ImageRewardModel."""


def load_imagereward_weights(model: ImageRewardModel, checkpoint: dict, source: str = "state dict") -> None:
    """Load an official-format state dict (`blip.*`, `mlp.*`) into `model`; fail on any missing/unexpected key."""
    expected = model.state_dict()
    mapped, unexpected = {}, []
    for key, tensor in checkpoint.items():
        if any(pattern.fullmatch(key) for pattern in _UNUSED):
            continue
        target = _rename(key, _FORWARD)
        if target is None or target not in expected:
            unexpected.append(key)
        else:
            mapped[target] = tensor
    missing = [_rename(key, _BACKWARD) or key for key in expected if key not in mapped]
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        raise ImageRewardKeyError(
            f"{source} does not match ImageReward ({model.arch}): missing keys: {show(missing) or 'none'}; "
            f"unexpected keys: {show(unexpected) or 'none'}")
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as err:  # shapes
        raise ImageRewardKeyError(f"{source} does not match ImageReward ({model.arch}): {err}") from err


def official_state_dict(model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """`model`'s weights under the checkpoint's names (the inverse of the key map; for tests and exports)."""
    return {_rename(key, _BACKWARD): tensor for key, tensor in model.state_dict().items()}


def blip_bert_tokenizer(vocab_file: str | os.PathLike) -> BertTokenizer:
    """bert-base-uncased's WordPiece tokenizer plus BLIP's `[DEC]` (bos) and `[ENC]` (BLIP blip.py init_tokenizer)."""
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


def imagereward_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> 8-bit -> Resize(size, bicubic) + CenterCrop(size) on PIL -> normalised."""
    quantised = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    crops = []
    for image in quantised:
        pil = TF.resize(TF.to_pil_image(image), size, interpolation=InterpolationMode.BICUBIC)
        crops.append(TF.to_tensor(TF.center_crop(pil, size)))
    pixels = torch.stack(crops)  # (N, 3, size, size) in [0, 1]
    return TF.normalize(pixels, OPENAI_MEAN, OPENAI_STD)


@dataclass(frozen=True)
class ImageRewardConfig(BatchedScorerConfig):
    batch_size: int = field(default=8, metadata={"help": "images per forward pass"})


class ImageRewardScorer(Scorer, name="imagereward", config=ImageRewardConfig, higher_is_better=True,
                        scale="ImageReward v1.0 reward, standardised: (r - 0.1672) / 1.0333 (about N(0, 1))"):
    """ImageReward v1.0: standardised reward, about N(0, 1) over its training prompts' images."""

    def __init__(self, config: ImageRewardConfig | None = None, *, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, allow_pickle: bool = False, **fields):
        """Args:
            config: the batch size (`ImageRewardConfig`; None: 8), or name its fields in `fields`.
            weights: `ImageReward.pt` or a directory holding it. `med_config.json` and bert-base-uncased's
                `vocab.txt` are taken from that directory when there, else (as is `ImageReward.pt` when `weights`
                is None) from $BENCH_WEIGHTS_DIR, then the Hugging Face cache. A missing file raises
                MissingWeightsError here, naming where to get it, before anything is built.
            device: default CUDA when available, else CPU.
            allow_pickle: load a checkpoint that `torch.load(weights_only=True)` refuses (trusted files only).
        """
        super().__init__(config, **fields)
        checkpoint_spec, config_spec, vocab_spec = self.weight_specs()
        checkpoint = self.locate_weights(checkpoint_spec, weights)
        folder = None if weights is None else Path(weights) if Path(weights).is_dir() else Path(weights).parent

        def beside_checkpoint(spec: WeightSpec) -> Path:
            in_folder = folder is not None and (folder / spec.filename).is_file()
            return self.locate_weights(spec, folder if in_folder else None)

        med_config, vocab = beside_checkpoint(config_spec), beside_checkpoint(vocab_spec)
        arch = ImageRewardArchitecture.from_med_config(json.loads(Path(med_config).read_text()))
        tokenizer = blip_bert_tokenizer(vocab)
        if len(tokenizer) != arch.vocab_size:
            raise ValueError(f"{vocab} gives {len(tokenizer)} tokens with [DEC] and [ENC]; {med_config} says "
                             f"vocab_size {arch.vocab_size} (bert-base-uncased's vocab.txt has {BERT_VOCAB_SIZE})")
        model = ImageRewardModel(arch)
        load_imagereward_weights(model, load_state_dict(checkpoint, allow_pickle=allow_pickle), str(checkpoint))
        self.weight_files = [(checkpoint_spec, checkpoint), (config_spec, med_config), (vocab_spec, vocab)]
        self._setup(model, tokenizer, device)

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return [
            WeightSpec("imagereward", IMAGEREWARD_REPO, "ImageReward.pt", "ImageReward v1.0 state dict (BLIP + MLP, 1.79 GB)"),
            WeightSpec("imagereward", IMAGEREWARD_REPO, "med_config.json", "BERT config of BLIP's text encoder"),
            WeightSpec("imagereward", "bert-base-uncased", "vocab.txt", "BERT WordPiece vocabulary of the text encoder"),
        ]

    @classmethod
    def from_config(cls, arch: ImageRewardArchitecture, vocab_file: str | os.PathLike, *, seed: int = 0,
                    batch_size: int = 8, device: str | torch.device | None = "cpu") -> ImageRewardScorer:
        """Random weights (seeded) on `arch`, with the tokenizer of `vocab_file`: the scoring path without weights."""
        torch.manual_seed(seed)
        scorer = cls.__new__(cls)
        scorer.config = ImageRewardConfig(batch_size=batch_size)
        scorer._setup(ImageRewardModel(arch), blip_bert_tokenizer(vocab_file), device)
        return scorer

    def _setup(self, model: ImageRewardModel, tokenizer: BertTokenizer, device: str | torch.device | None) -> None:
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (N, 35) each: [CLS] prompt [SEP], cut at 35, padded with [PAD]."""
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
                                return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    @torch.no_grad()
    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        check_inputs(prompts, images)
        return in_batches(self.config.batch_size, self._rewards, prompts, images).float().cpu()

    def _rewards(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        pixels = imagereward_preprocess(images, self.model.arch.image_size).to(self.device)
        input_ids, attention_mask = self.tokenize(prompts)
        return self.model(pixels, input_ids.to(self.device), attention_mask.to(self.device))
