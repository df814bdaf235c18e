"""`toy-clip` and `toy-pickscore`: a tiny CLIP for the toy world, and that CLIP fine-tuned on the toy
preference pairs with PickScore's objective. Proxies of the kind real benchmarks use, on a world
whose true reward (`oracle`) is known, so a proxy gain can be checked against a true gain.

- `toy-clip`:      100 * max(cos(E_I(x), E_T(c)), 0)     (CLIP score, as `clip`)
- `toy-pickscore`: exp(s) * cos(E_I(x), E_T(c))          (PickScore, as `pickscore`; s = logit_scale)

The model is a transformers `CLIPModel` built from a config dict (`ToyClipConfig`): a ViT on the
32x32 toy images (patch 4, so 64 patches), a text transformer over CLIP's real BPE vocabulary
(`bench.clip_bpe`, 16 positions; toy captions are <= 14 tokens), embeddings of width 64. Training
(contrastive on toy renders, then PickScore fine-tuning) is `bench.toy.scorers` (`bench toy
build-scorers`). Images are preprocessed as CLIP does (`ClipPreprocess`, size 32, OpenAI mean/std);
any other resolution is resized.

Files: `toy-clip.safetensors` and `toy-pickscore.safetensors`, the config and training facts in the
safetensors metadata. Only the token-embedding rows of tokens seen in training are stored
(`token_ids`, `token_rows`); the others load as zeros, so a file is ~0.5 MB instead of 13 MB. A word
outside the toy grammar therefore embeds as nothing: these scorers are meaningful on toy captions only.

Looked for in: `weights=` (a file or a directory holding it), `$BENCH_TOY_DIR/scorers/`, then the
shipped `bench/toy/assets/scorers/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metrics.base import SCORERS, MissingWeightsError, Scorer
from metrics.clip_score import ClipBackbone, ClipPreprocess, batched_features, clip_score
from metrics.pickscore import pickscore
from metrics.weights import WeightSpec

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "bench" / "toy" / "assets" / "scorers"
TOY_DIR_ENV = "BENCH_TOY_DIR"
TOKEN_KEY = "text_model.embeddings.token_embedding.weight"
_SOURCE = "diffusion-align-bench: shipped in bench/toy/assets/scorers, rebuilt by `bench toy build-scorers`"


@dataclass(frozen=True)
class ToyClipConfig:
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 64
    vision_layers: int = 3
    text_width: int = 64
    text_layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    context_length: int = 16
    embed_dim: int = 64
    logit_scale_init: float = 2.6592  # ln(1 / 0.07), CLIP's initial temperature

    def clip_config(self):
        from transformers import CLIPConfig

        from bench.clip_bpe import CLIP_VOCAB_SIZE

        text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=self.text_width, intermediate_size=self.mlp_ratio * self.text_width,
                    num_hidden_layers=self.text_layers, num_attention_heads=self.heads,
                    max_position_embeddings=self.context_length, bos_token_id=CLIP_VOCAB_SIZE - 2,
                    eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1)
        vision = dict(image_size=self.image_size, patch_size=self.patch_size, hidden_size=self.vision_width,
                      intermediate_size=self.mlp_ratio * self.vision_width, num_hidden_layers=self.vision_layers,
                      num_attention_heads=self.heads)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim,
                          logit_scale_init_value=self.logit_scale_init)


def build_toy_clip(cfg: ToyClipConfig = ToyClipConfig(), seed: int = 0):
    """A randomly initialised toy `CLIPModel` (deterministic in `seed`)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(cfg.clip_config()).float()


def toy_backbone(model, cfg: ToyClipConfig, name: str = "toy-clip") -> ClipBackbone:
    from bench.clip_bpe import clip_bpe_tokenizer

    return ClipBackbone(model, "transformers", clip_bpe_tokenizer(cfg.context_length), ClipPreprocess(size=cfg.image_size),
                        cfg.context_length, name)


def save_toy_clip(model, cfg: ToyClipConfig, path: str | Path, used_token_ids: list[int], info: dict | None = None) -> Path:
    """Save float32 weights with only the `used_token_ids` rows of the token embedding (atomically)."""
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    ids = torch.tensor(sorted(set(used_token_ids)), dtype=torch.int64)
    state["token_rows"] = state.pop(TOKEN_KEY)[ids].contiguous()
    state["token_ids"] = ids
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # buffers rebuilt on load
    metadata = {"config": json.dumps(dataclasses.asdict(cfg)), "info": json.dumps(info or {}, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates the file private
    os.replace(tmp, path)
    return path


def load_toy_clip(path: str | Path):
    """(CLIPModel, ToyClipConfig, info) from a file written by `save_toy_clip`; unseen tokens embed as 0."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in metadata or "token_ids" not in state:
        raise ValueError(f"{path} is not a toy CLIP file (no config metadata or token_ids)")
    cfg = ToyClipConfig(**json.loads(metadata["config"]))
    model = build_toy_clip(cfg)
    table = torch.zeros_like(model.state_dict()[TOKEN_KEY])
    table[state.pop("token_ids")] = state.pop("token_rows")
    state[TOKEN_KEY] = table
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval(), cfg, json.loads(metadata.get("info", "{}"))


class _ToyClipScorer(Scorer):
    filename: ClassVar[str]
    higher_is_better = True

    def __init__(self, *, weights: str | Path | None = None, allow_pickle: bool = False, batch_size: int = 256):
        spec = self.weight_specs()[0]
        path = self.locate_weights(spec, weights)
        model, self.config, self.info = load_toy_clip(path)
        self.backbone = toy_backbone(model, self.config, self.name)
        self.weight_files = [(spec, path)]
        self.batch_size = batch_size

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return [WeightSpec(cls.name, _SOURCE, cls.filename, (cls.__doc__ or "").strip().split("\n")[0])]

    @classmethod
    def locate_weights(cls, spec: WeightSpec, explicit: str | Path | None = None) -> Path:
        """`explicit` (a file, or a directory holding it); else `$BENCH_TOY_DIR/scorers/`, then the shipped file."""
        if explicit is not None:
            explicit = Path(explicit)
            looked = [explicit / spec.filename if explicit.is_dir() else explicit]
        else:
            toy_dir = os.environ.get(TOY_DIR_ENV)
            looked = ([Path(toy_dir) / "scorers" / spec.filename] if toy_dir else []) + [SHIPPED_DIR / spec.filename]
        for path in looked:
            if path.is_file():
                return path
        raise MissingWeightsError(
            f"{spec.scorer}: weights {spec.filename!r} not found (looked in {', '.join(map(str, looked))}). Build them "
            f"with `bench toy build-scorers --out DIR`, then pass --weights {spec.scorer}=DIR or set "
            f"{TOY_DIR_ENV} to a directory holding scorers/{spec.filename}.")

    def features(self, prompts: list[str], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batched_features(self.backbone, prompts, images, self.batch_size)

    def describe(self) -> dict:
        return {**super().describe(), **self.backbone.describe(), "config": dataclasses.asdict(self.config),
                "training": self.info}


@SCORERS.register("toy-clip")
class ToyClipScorer(_ToyClipScorer):
    """A tiny CLIP trained contrastively on toy renders: 100 * max(cos, 0), the toy world's CLIP score."""

    name = "toy-clip"
    filename = "toy-clip.safetensors"
    scale = "100 x max(cos(image, text), 0) of the toy CLIP, in [0, 100]"

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return clip_score(*self.features(prompts, images))


@SCORERS.register("toy-pickscore")
class ToyPickScoreScorer(_ToyClipScorer):
    """The toy CLIP fine-tuned on the toy preference pairs with PickScore's loss: exp(logit_scale) * cos."""

    name = "toy-pickscore"
    filename = "toy-pickscore.safetensors"
    scale = "exp(logit_scale) x cos(image, text) of the toy PickScore"

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return pickscore(*self.features(prompts, images), self.backbone.logit_scale)
