"""`hps`: Human Preference Score v2 / v2.1 (Wu et al. 2023), batched.

    score(prompt, image) = 100 * cos(E_img(pad(image)), E_txt(prompt))

with E the open_clip ViT-H-14 towers (image and text embeddings L2-normalised) fine-tuned on HPD v2, and
`pad` HPS's evaluation preprocessing: resize the longest side to 224 (bicubic, antialiased), then zero-pad
(black, before normalisation) to 224x224, centred, then OpenAI mean/std normalisation. HPS does not
centre-crop: a wide image keeps its full width and gets black bars above and below.

Reference: tgxs002/HPSv2 @866735e, `hpsv2/img_score.py` (score), `hpsv2/src/open_clip/transform.py`
(`ResizeMaxSize`, applied to the tensor after `ToTensor`) and its vendored open_clip's `ViT-H-14`; weights
`HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` in the hub repo `xswu/HPSv2`, `ckpt['state_dict']`.

Scale: `hpsv2.score()` returns the raw cosine (about 0.25-0.35 for real models); the HPS v2 benchmark
tables (`hpsv2/evaluation.py`) report 100 x cosine (v2 23-28.5, v2.1 14-33). We report 100 x cosine so our
numbers read like the tables: divide by 100 to compare with `hpsv2.score()`.

Differences from the reference, all deliberate:
- batched: text embeddings once per distinct prompt, images in batches of `batch_size`, weights loaded once
  (`hpsv2.score` loops over images one at a time and `torch.load`s the 2 GB checkpoint on every call);
- an image whose longest side is already 224 but is not square is padded to 224x224 (the reference skips
  the padding then and its ViT fails on the non-square input);
- float32 on every device (the reference runs under CUDA fp16 autocast on a GPU, fp32 on CPU).
The resize is torchvision's antialiased bicubic, as `hpsv2` runs today (torchvision >= 0.17); the HPS
authors' 2023 stack resized tensors without antialiasing, which changes scores of downscaled images
slightly. `tests/refcheck` checks this module against the `hpsv2` package on the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import open_clip
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from metrics.base import OPENAI_MEAN, OPENAI_STD, BatchedScorerConfig, Scorer, check_inputs, default_device, in_batches
from metrics.weights import WeightSpec, load_state_dict

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # hpsv2/utils.py hps_version_map
HPS_MODEL = "ViT-H-14"  # hpsv2/img_score.py: create_model_and_transforms('ViT-H-14', ...)


def hps_model_config() -> dict:
    """open_clip's ViT-H-14 config (embed 1024; ViT 32 x 1280, patch 14 at 224; text 24 x 1024, 77 tokens)."""
    return open_clip.get_model_config(HPS_MODEL)


def build_hps_clip(model_cfg: dict | None = None) -> open_clip.CLIP:
    """An open_clip CLIP with random weights: ViT-H-14 by default, or any config of the same shape (tests)."""
    cfg = hps_model_config() if model_cfg is None else model_cfg
    return open_clip.CLIP(**cfg).eval().requires_grad_(False)


def resize_longest_and_pad(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPS's `ResizeMaxSize(size, fill=0)` on a batch (N, C, H, W) in [0, 1] -> (N, C, size, size).

    The longest side goes to `size` (bicubic, antialiased; the other side `round(side * size / longest)`),
    then zeros are added, `pad // 2` on the top/left and the rest on the bottom/right.
    """
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)  # Python round, as the reference
        images = TF.resize(images, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    else:
        new_h, new_w = height, width
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def hps_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images float RGB in [0, 1], (N, 3, H, W) -> normalised (N, 3, size, size) model input."""
    padded = resize_longest_and_pad(images.float(), size)
    mean = torch.tensor(OPENAI_MEAN, dtype=padded.dtype, device=padded.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=padded.dtype, device=padded.device).view(1, 3, 1, 1)
    return (padded - mean) / std


def load_hps_weights(model: open_clip.CLIP, state_dict: dict, source: str) -> None:
    """Load an HPS state dict exactly: any missing, unexpected or mis-shaped key raises ValueError."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source} is not an HPS v2 open_clip state dict for this architecture: {err}") from err


@dataclass(frozen=True)
class HPSConfig(BatchedScorerConfig):
    version: str = field(default="v2.1", metadata={
        "help": "checkpoint: v2.1 (HPS_v2.1_compressed.pt) or v2.0 (HPS_v2_compressed.pt), both ViT-H-14"})
    batch_size: int = field(default=16, metadata={"help": "images (and distinct prompts) per forward pass"})

    def __post_init__(self):
        if self.version not in HPS_FILES:
            raise ValueError(f"unknown HPS version {self.version!r}; known: {', '.join(HPS_FILES)}")
        super().__post_init__()


class HPSScorer(Scorer, name="hps", config=HPSConfig, higher_is_better=True,
                scale="100 x cosine(image, prompt), the HPS v2 benchmark tables' unit (hpsv2.score() gives the cosine)"):
    """HPS v2 / v2.1 as 100 x cosine; `version` picks the checkpoint (same ViT-H-14 architecture)."""

    def __init__(self, config: HPSConfig | None = None, *, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, allow_pickle: bool = False, **fields):
        """Args:
            config: version and batch size (`HPSConfig`; None: v2.1, 16), or name its fields in `fields`.
            weights: the checkpoint file or a directory holding it; None looks in $BENCH_WEIGHTS_DIR, then the
                Hugging Face cache (`metrics.weights.resolve`). Missing -> MissingWeightsError, here.
            device: default CUDA when available, else CPU (float32 either way).
            allow_pickle: load a checkpoint that `torch.load(weights_only=True)` refuses (trusted files only).
        """
        super().__init__(config, **fields)
        spec = self.weight_specs(self.config.version)[0]
        path = self.locate_weights(spec, weights)  # before the 10 s model build
        model = build_hps_clip()
        load_hps_weights(model, load_state_dict(path, allow_pickle=allow_pickle), str(path))
        self.weight_files = [(spec, path)]
        self._setup(model, self.config.version, device)

    @classmethod
    def weight_specs(cls, version: str = "v2.1") -> list[WeightSpec]:
        """The checkpoint of `version` (default v2.1; `weight_specs("v2.0")` for the other)."""
        return [WeightSpec("hps", HPS_REPO, HPS_FILES[version], f"HPS {version} open_clip ViT-H-14 state dict (1.97 GB)")]

    @classmethod
    def from_config(cls, model_cfg: dict | None = None, *, seed: int = 0, batch_size: int = 16,
                    device: str | torch.device | None = "cpu") -> HPSScorer:
        """Random weights (seeded) on `model_cfg` (default ViT-H-14): the scoring path without any checkpoint."""
        torch.manual_seed(seed)
        scorer = cls.__new__(cls)
        scorer.config = HPSConfig(batch_size=batch_size)
        scorer._setup(build_hps_clip(model_cfg), "random", device)
        return scorer

    def _setup(self, model: open_clip.CLIP, version: str, device: str | torch.device | None) -> None:
        self.version = version
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval().requires_grad_(False)
        image_size = self.model.visual.image_size
        self.image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.model.context_length)

    def describe(self) -> dict:
        return {**super().describe(), "version": self.version}

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings, (P, D)."""
        def encode(part: list[str]) -> torch.Tensor:
            return self.model.encode_text(self.tokenizer(part).to(self.device), normalize=True)

        return in_batches(self.config.batch_size, encode, prompts).float()

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of (N, 3, H, W) images in [0, 1], (N, D)."""
        def encode(part: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(hps_preprocess(part.to(self.device), self.image_size), normalize=True)

        return in_batches(self.config.batch_size, encode, images).float()

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        check_inputs(prompts, images)
        row_of = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        text = self.text_features(list(row_of))  # (P, D), one row per distinct prompt
        rows = torch.tensor([row_of[prompt] for prompt in prompts], device=text.device)
        cosine = (self.image_features(images) * text[rows]).sum(-1)  # (N,)
        return (100.0 * cosine).cpu()
