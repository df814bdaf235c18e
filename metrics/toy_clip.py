"""`toy-clip` and `toy-pickscore`: a tiny CLIP for the toy world, and that CLIP fine-tuned on the toy
preference pairs with PickScore's objective. Proxies of the kind real benchmarks use, on a world
whose true reward (`oracle`) is known, so a proxy gain can be checked against a true gain.

- `toy-clip`:      100 * max(cos(E_I(x), E_T(c)), 0)     (CLIP score, as `clip`)
- `toy-pickscore`: exp(s) * cos(E_I(x), E_T(c))          (PickScore, as `pickscore`; s = logit_scale)

The model is an open_clip `CLIP` built from a custom model config (`ToyClipConfig.open_clip_config()`,
open_clip's `model_configs/*.json` format): a ViT on the 32x32 toy images (patch 4, so 64 patches,
width 64, 3 layers), a causal text transformer over CLIP's real BPE vocabulary (open_clip's
`SimpleTokenizer`, 16 positions; toy captions are <= 14 tokens; EOT-pooled), embeddings of width 64.
Training (contrastive on toy renders, then PickScore fine-tuning) is `bench.harness.toy_build.scorers` (`bench toy
build-scorers`). Scoring goes through the same `ClipBackbone` open_clip path as `clip` with an
open_clip backbone. Images are preprocessed as CLIP does (`ClipPreprocess`, size 32, OpenAI
mean/std); any other resolution is resized.

Files: `toy-clip.safetensors` and `toy-pickscore.safetensors`, the open_clip config and training facts
in the safetensors metadata (one JSON key, so a rebuild on the same machine and thread count is
byte-identical). Only the token-embedding rows of tokens seen in training are stored (`token_ids`,
`token_rows`); the others load as zeros, so a file is ~1 MB instead of 13 MB. A word outside the toy
grammar therefore embeds as nothing: these scorers are meaningful on toy captions only.

Looked for in: `weights=` (a file or a directory holding it), `$BENCH_WEIGHTS_DIR/<scorer>/` and
`$BENCH_WEIGHTS_DIR/`, `$BENCH_TOY_DIR/scorers/`, then the shipped `bench/toy/assets/scorers/` (no hub).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.toy.paths import TOY_DIR_ENV, toy_dirs
from metrics.base import BatchedScorerConfig, MissingWeightsError
from metrics.clip_score import ClipBackbone, ClipBackboneScorer, ClipPreprocess, clip_score
from metrics.pickscore import pickscore
from metrics.weights import WEIGHTS_ENV, WeightSpec

TOKEN_KEY = "token_embedding.weight"  # open_clip CLIP
METADATA_KEY = "toy_clip"  # JSON: config, open_clip_config, info
_SOURCE = "shipped: bench/toy/assets/scorers (`bench toy build-scorers`)"


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

    def __post_init__(self):
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ValueError(f"widths ({self.vision_width}, {self.text_width}) must be multiples of heads ({self.heads})")

    def open_clip_config(self) -> dict:
        """open_clip's model config (as in `open_clip/model_configs/ViT-B-32.json`)."""
        from bench.core.clip_bpe import CLIP_VOCAB_SIZE

        vision = dict(image_size=self.image_size, patch_size=self.patch_size, width=self.vision_width,
                      layers=self.vision_layers, head_width=self.vision_width // self.heads, mlp_ratio=self.mlp_ratio)
        text = dict(context_length=self.context_length, vocab_size=CLIP_VOCAB_SIZE, width=self.text_width,
                    heads=self.heads, layers=self.text_layers, mlp_ratio=self.mlp_ratio)
        return {"embed_dim": self.embed_dim, "vision_cfg": vision, "text_cfg": text}


def build_toy_clip(cfg: ToyClipConfig = ToyClipConfig(), seed: int = 0):
    """A randomly initialised toy open_clip `CLIP` (deterministic in `seed`)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    config = cfg.open_clip_config()
    torch.manual_seed(seed)
    return CLIP(config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), CLIPTextCfg(**config["text_cfg"]),
                init_logit_scale=cfg.logit_scale_init).float()


@functools.lru_cache(maxsize=4)
def toy_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer: (N,) strings -> (N, context_length) ids, SOT ... EOT then 0-padded."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def toy_backbone(model, cfg: ToyClipConfig, name: str = "toy-clip") -> ClipBackbone:
    return ClipBackbone(model, "open_clip", toy_tokenizer(cfg.context_length), ClipPreprocess(size=cfg.image_size),
                        cfg.context_length, name)


def save_toy_clip(model, cfg: ToyClipConfig, path: str | Path, used_token_ids: list[int], info: dict | None = None) -> Path:
    """Save float32 weights with only the `used_token_ids` rows of the token embedding (atomically)."""
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    ids = torch.tensor(sorted(set(used_token_ids)), dtype=torch.int64)
    state["token_rows"] = state.pop(TOKEN_KEY)[ids].contiguous()
    state["token_ids"] = ids
    # One metadata key: safetensors writes several in a random order, and the file's SHA256 should not vary.
    facts = {"config": dataclasses.asdict(cfg), "open_clip_config": cfg.open_clip_config(), "info": info or {}}
    metadata = {METADATA_KEY: json.dumps(facts, sort_keys=True)}
    from bench.core.records import atomic_output

    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors creates the file private
    return Path(path)


def load_toy_clip(path: str | Path):
    """(open_clip CLIP, ToyClipConfig, info) from a file written by `save_toy_clip`; unseen tokens embed as 0."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if METADATA_KEY not in metadata or "token_ids" not in state:
        raise ValueError(f"{path} is not a toy CLIP file (no {METADATA_KEY!r} metadata or token_ids)")
    facts = json.loads(metadata[METADATA_KEY])
    cfg = ToyClipConfig(**facts["config"])
    model = build_toy_clip(cfg)
    table = torch.zeros_like(model.state_dict()[TOKEN_KEY])
    table[state.pop("token_ids")] = state.pop("token_rows")
    state[TOKEN_KEY] = table
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval(), cfg, facts["info"]


@dataclass(frozen=True)
class ToyScorerConfig(BatchedScorerConfig):
    """The settings of toy-clip and toy-pickscore."""

    batch_size: int = dataclasses.field(default=256, metadata={"help": "images (and prompts) per forward pass"})


class _ToyClipScorer(ClipBackboneScorer, config=ToyScorerConfig, higher_is_better=True, differentiable=True):
    filename: ClassVar[str]

    def __init__(self, config: ToyScorerConfig | None = None, *, weights: str | Path | None = None, **fields):
        super().__init__(config, **fields)
        spec = self.weight_specs()[0]
        path = self.locate_weights(spec, weights)
        model, self.architecture, self.info = load_toy_clip(path)
        self.backbone = toy_backbone(model, self.architecture, self.name)
        self.weight_files = [(spec, path)]

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        return [WeightSpec(cls.name, _SOURCE, cls.filename, (cls.__doc__ or "").strip().split("\n")[0])]

    @classmethod
    def locate_weights(cls, spec: WeightSpec, explicit: str | Path | None = None) -> Path:
        """`explicit` (a file, or a directory holding it); else `$BENCH_WEIGHTS_DIR/<scorer>/<file>`,
        `$BENCH_WEIGHTS_DIR/<file>`, `$BENCH_TOY_DIR/scorers/<file>`, then the shipped file."""
        if explicit is not None:
            explicit = Path(explicit)
            looked = [explicit / spec.filename if explicit.is_dir() else explicit]
        else:
            weights_dir = os.environ.get(WEIGHTS_ENV)
            looked = [Path(weights_dir) / spec.scorer / spec.filename, Path(weights_dir) / spec.filename] if weights_dir else []
            looked += [d / "scorers" / spec.filename for d in toy_dirs()]
        for path in looked:
            if path.is_file():
                return path
        raise MissingWeightsError(
            f"{spec.scorer}: weights {spec.filename!r} not found (looked in {', '.join(map(str, looked))}). Build them "
            f"with `bench toy build-scorers --out DIR`, then pass --weights {spec.scorer}=DIR, or set {WEIGHTS_ENV}=DIR "
            f"(DIR/{spec.scorer}/{spec.filename} or DIR/{spec.filename}) or {TOY_DIR_ENV} (DIR/scorers/{spec.filename}).")

    def describe(self) -> dict:
        return {**super().describe(), "config": dataclasses.asdict(self.architecture), "training": self.info}


class ToyClipScorer(_ToyClipScorer, name="toy-clip",
                    scale="100 x max(cos(image, text), 0) of the toy CLIP, in [0, 100]"):
    """A tiny CLIP trained contrastively on toy renders: 100 * max(cos, 0), the toy world's CLIP score."""

    filename = "toy-clip.safetensors"

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return clip_score(*self.features(prompts, images))


class ToyPickScoreScorer(_ToyClipScorer, name="toy-pickscore",
                         scale="exp(logit_scale) x cos(image, text) of the toy PickScore"):
    """The toy CLIP fine-tuned on the toy preference pairs with PickScore's loss: exp(logit_scale) * cos."""

    filename = "toy-pickscore.safetensors"

    def __init__(self, config: ToyScorerConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.scale = f"{type(self).scale}; exp(logit_scale) = {float(self.backbone.logit_scale.exp()):.2f}"

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return pickscore(*self.features(prompts, images), self.backbone.logit_scale)

    def describe(self) -> dict:
        return {**super().describe(), "logit_scale_exp": float(self.backbone.logit_scale.exp())}
