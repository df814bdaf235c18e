"""`bench toy build-scorers`: train the toy world's proxy scorers `toy-clip` and `toy-pickscore`.

1. **toy-clip** (CLIP, Radford et al. 2021): the tiny open_clip `CLIP` of `metrics.toy_clip` trained from
   scratch with the symmetric contrastive loss on toy renders and their captions,

       L = ½ [CE(s · I Tᵀ, diag) + CE(s · T Iᵀ, diag)],   I, T the L2-normalised embeddings of a batch,

   every batch holding distinct captions (so the diagonal is the only match) and s = exp(logit_scale)
   learned, clamped at 100 as in CLIP. Renders are blurred and noised at random, as base-model samples
   are blurry (a CLIP that saw only sharp renders would score samples out of its distribution).
2. **toy-pickscore** (PickScore, Kirstain et al. 2023): toy-clip fine-tuned on the toy preference pairs
   (`prefs.parquet`, Pick-a-Pic v2 schema) with PickScore's objective (yuvalkirstain/PickScore
   `trainer/criterions/clip_criterion.py`, `in_batch_negatives=False`): for a caption c and images
   x0, x1 with labels (l0, l1) (one-hot, or ½, ½ for a tie),

       p = softmax(s · [cos(c, x0), cos(c, x1)]),   L = −(l0 log p0 + l1 log p1) + 1[tie] log ½,

   each pair weighted by 1 / (pairs of its caption), normalised over the batch. A tenth of the
   training captions is held out to report pair accuracy.

Then both are scored against the oracle (Spearman ρ) on base-model samples of the held-out
evaluation prompts (the toy suite's evaluation set) and on perturbed renders, and on held-out pairs.
Everything is deterministic given the seed (explicit generators) on one machine and thread count.
Output: `toy-clip.safetensors`, `toy-pickscore.safetensors`, `scorers.json` (config, timings, report).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.config import EvalConfig
from bench.core.progress import progress_bar
from bench.core.records import environment, now, staged_directory, write_json_atomic
from bench.harness.data import decode_images, load_pickapic
from bench.harness.evaluation import evaluation_set
from bench.harness.sampling import generate
from bench.toy.oracle import oracle_reward
from bench.toy.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Combo,
    all_combos,
    render,
    render_dataset,
    sample_scene,
    split_combos,
)
from metrics.clip_score import ClipPreprocess
from metrics.toy_clip import ToyClipConfig, ToyClipScorer, ToyPickScoreScorer, build_toy_clip, save_toy_clip, toy_tokenizer

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps exp(logit_scale) at 100


@dataclass(frozen=True)
class ToyScorerConfig:
    clip: ToyClipConfig = field(default_factory=ToyClipConfig)
    renders_per_combo: int = 24  # x 216 combos
    contrastive_steps: int = 800
    contrastive_batch: int = 128  # distinct captions per batch (of 216)
    contrastive_lr: float = 1e-3
    weight_decay: float = 0.05
    blur_max: float = 1.2  # Gaussian blur sigma ~ U(0, blur_max) pixels
    noise_max: float = 0.05  # additive Gaussian noise std ~ U(0, noise_max)
    preference_steps: int = 300
    preference_batch: int = 64  # pairs
    preference_lr: float = 1e-4
    held_out_captions: float = 0.1  # fraction of preference captions kept out of fine-tuning
    max_pairs: int | None = None
    report_renders: int = 256  # perturbed renders the Spearman report scores
    seed: int = 0

    def __post_init__(self):
        for name in ("renders_per_combo", "contrastive_steps", "contrastive_batch", "preference_steps",
                     "preference_batch", "report_renders"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.held_out_captions < 1:
            raise ValueError("held_out_captions must be in [0, 1)")
        if self.contrastive_batch > len(all_combos()):
            raise ValueError(f"contrastive_batch must be <= {len(all_combos())} (distinct captions)")


def _cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def augment(images: torch.Tensor, cfg: ToyScorerConfig, gen: torch.Generator) -> torch.Tensor:
    """Random Gaussian blur and additive noise per image: (B, 3, H, W) -> same, clamped to [0, 1]."""
    b = images.shape[0]
    sigma = torch.rand(b, generator=gen) * cfg.blur_max  # (B,)
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))  # (B, 5)
    kernel = kernel / kernel.sum(1, keepdim=True)
    x = images.reshape(1, b * 3, *images.shape[-2:])
    k = kernel.repeat_interleave(3, 0)  # (3B, 5): one separable kernel per channel of each image
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * 3)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * 3)
    x = x.reshape_as(images)
    noise = torch.randn(images.shape, generator=gen) * (torch.rand(b, generator=gen) * cfg.noise_max)[:, None, None, None]
    return (x + noise).clamp(0, 1)


def _tokens(captions: list[str], length: int) -> torch.Tensor:
    """(N, length) open_clip token ids (SOT ... EOT, 0-padded)."""
    return toy_tokenizer(length)(captions)


def _embed(model, preprocess: ClipPreprocess, images: torch.Tensor, ids: torch.Tensor):
    """L2-normalised (image, text) embeddings, (B, D) each, with gradients."""
    return model.encode_image(preprocess(images), normalize=True), model.encode_text(ids, normalize=True)


def _update(model, optimizer, schedule, loss: torch.Tensor) -> None:
    """One optimizer and schedule step on `loss`, then CLIP's clamp of exp(logit_scale) at 100."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def train_toy_clip(cfg: ToyScorerConfig, *, progress: bool = True):
    """Contrastive training from scratch; returns (model, used token ids, history)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    combos = all_combos()
    images, captions = render_dataset(combos, cfg.renders_per_combo, cfg.seed)  # (C*R, 3, 32, 32), combo-major
    ids = _tokens([c.caption for c in combos], cfg.clip.context_length)  # (C, L)
    model = build_toy_clip(cfg.clip, cfg.seed).train().requires_grad_(True)
    preprocess = ClipPreprocess(size=cfg.clip.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.contrastive_lr, weight_decay=cfg.weight_decay)
    schedule = _cosine_schedule(optimizer, cfg.contrastive_steps, warmup=max(1, cfg.contrastive_steps // 20))
    labels = torch.arange(cfg.contrastive_batch)
    history = []
    for step in progress_bar(range(cfg.contrastive_steps), enabled=progress, desc="toy-clip"):
        which = torch.randperm(len(combos), generator=gen)[:cfg.contrastive_batch]  # distinct captions
        render_idx = which * cfg.renders_per_combo + torch.randint(0, cfg.renders_per_combo, (len(which),), generator=gen)
        image, text = _embed(model, preprocess, augment(images[render_idx], cfg, gen), ids[which])
        logits = model.logit_scale.exp() * image @ text.T  # (B, B)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        _update(model, optimizer, schedule, loss)
        if step % 50 == 0 or step == cfg.contrastive_steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
    return model.eval().requires_grad_(False), sorted(set(ids.flatten().tolist())), history


@dataclass
class PreferenceTensors:
    captions: list[str]
    image_0: torch.Tensor  # (P, 3, 32, 32)
    image_1: torch.Tensor
    label_0: torch.Tensor  # (P,)
    label_1: torch.Tensor
    reward_0: torch.Tensor | None  # oracle rewards when the data carries them (toy builds do)
    reward_1: torch.Tensor | None

    def select(self, rows: list[int]) -> PreferenceTensors:
        idx = torch.tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return PreferenceTensors([self.captions[i] for i in rows], self.image_0[idx], self.image_1[idx],
                                 self.label_0[idx], self.label_1[idx], pick(self.reward_0), pick(self.reward_1))


def load_preferences(path: str | Path, image_size: int, max_pairs: int | None = None) -> PreferenceTensors:
    """Pick-a-Pic-schema pairs as tensors (ties kept: PickScore trains on them)."""
    ds = load_pickapic(path)
    if max_pairs is not None:
        ds = ds.select(range(min(max_pairs, len(ds))))
    has_rewards = {"reward_0", "reward_1"} <= set(ds.column_names)
    reward = (lambda k: torch.tensor(ds[k], dtype=torch.float32)) if has_rewards else (lambda k: None)
    return PreferenceTensors(list(ds["caption"]), decode_images(list(ds["jpg_0"]), image_size),
                             decode_images(list(ds["jpg_1"]), image_size), torch.tensor(ds["label_0"], dtype=torch.float32),
                             torch.tensor(ds["label_1"], dtype=torch.float32), reward("reward_0"), reward("reward_1"))


def split_by_caption(prefs: PreferenceTensors, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): a `fraction` of the distinct captions (at least one if `fraction` > 0),
    chosen with `seed`, held out."""
    captions = sorted(set(prefs.captions))
    random.Random(seed).shuffle(captions)
    n_held = max(1, round(fraction * len(captions))) if fraction > 0 and len(captions) > 1 else 0
    held = set(captions[:n_held])
    train = [i for i, c in enumerate(prefs.captions) if c not in held]
    return train, [i for i, c in enumerate(prefs.captions) if c in held]


def pickscore_loss(text: torch.Tensor, image_0: torch.Tensor, image_1: torch.Tensor, logit_scale: torch.Tensor,
                   label_0: torch.Tensor, label_1: torch.Tensor, pairs_per_caption: torch.Tensor) -> torch.Tensor:
    """PickScore's loss without in-batch negatives, on normalised (B, D) embeddings (see the module doc)."""
    logits = logit_scale.exp() * torch.stack([(text * image_0).sum(-1), (text * image_1).sum(-1)], dim=-1)  # (B, 2)
    log_p = logits.log_softmax(-1)
    loss = -(label_0 * log_p[:, 0] + label_1 * log_p[:, 1])
    loss = loss + (label_0 == label_1).float() * math.log(0.5)  # a perfectly predicted tie costs 0
    weight = 1 / pairs_per_caption
    return (loss * weight / weight.sum()).sum()


def finetune_toy_pickscore(model, prefs: PreferenceTensors, cfg: ToyScorerConfig, *, progress: bool = True):
    """Fine-tune (a copy of) `model` on `prefs` with PickScore's loss; returns (model, history)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = copy.deepcopy(model).train().requires_grad_(True)
    preprocess = ClipPreprocess(size=cfg.clip.image_size)
    ids = _tokens(prefs.captions, cfg.clip.context_length)
    counts = Counter(prefs.captions)
    per_caption = torch.tensor([counts[c] for c in prefs.captions], dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.preference_lr, weight_decay=cfg.weight_decay)
    schedule = _cosine_schedule(optimizer, cfg.preference_steps, warmup=max(1, cfg.preference_steps // 20))
    history, order, cursor = [], torch.randperm(len(prefs.captions), generator=gen), 0
    for step in progress_bar(range(cfg.preference_steps), enabled=progress, desc="toy-pickscore"):
        if cursor + cfg.preference_batch > len(order):
            order, cursor = torch.randperm(len(prefs.captions), generator=gen), 0
        rows = order[cursor:cursor + cfg.preference_batch]
        cursor += cfg.preference_batch
        both = torch.cat([prefs.image_0[rows], prefs.image_1[rows]])  # (2B, 3, H, W)
        image, text = _embed(model, preprocess, augment(both, cfg, gen), ids[rows])
        image_0, image_1 = image.chunk(2)
        loss = pickscore_loss(text, image_0, image_1, model.logit_scale, prefs.label_0[rows], prefs.label_1[rows],
                              per_caption[rows])
        _update(model, optimizer, schedule, loss)
        if step % 25 == 0 or step == cfg.preference_steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
    return model.eval().requires_grad_(False), history


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in x.unique():  # average ranks over ties
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def perturbed_renders(combos: list[Combo], n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """n renders for the captions of `combos` (cycled) with 0-2 attributes changed, blur and noise:
    images spanning the oracle's range, for rank correlations."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    options = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS), "size": list(SIZES)}
    prompts, scenes = [], []
    for i in range(n):
        combo = combos[i % len(combos)]
        shown = combo
        for attribute in rng.sample(sorted(options), rng.choice([0, 0, 1, 1, 2])):
            shown = dataclasses.replace(shown, **{attribute: rng.choice([v for v in options[attribute]
                                                                          if v != getattr(combo, attribute)])})
        prompts.append(combo.caption)
        scenes.append(sample_scene(shown, rng))
    images = render(scenes)
    sigma = torch.rand(n, generator=gen) * 0.15
    return (images + torch.randn(images.shape, generator=gen) * sigma[:, None, None, None]).clamp(0, 1), prompts


def within_prompt_agreement(prompts: list[str], proxy: torch.Tensor, oracle: torch.Tensor) -> float:
    """Fraction of same-prompt image pairs (oracle not tied) that `proxy` orders as the oracle does
    (proxy ties count ½): how well the proxy ranks one prompt's images, which is what preference
    training and per-prompt win rates use, without its cross-prompt calibration."""
    agree, total = 0.0, 0
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    for rows in groups.values():
        idx = torch.tensor(rows)
        d_oracle = oracle[idx][:, None] - oracle[idx][None, :]  # (k, k)
        d_proxy = proxy[idx][:, None] - proxy[idx][None, :]
        upper = torch.triu(torch.ones_like(d_oracle, dtype=torch.bool), diagonal=1) & (d_oracle != 0)
        agree += float(((d_oracle * d_proxy > 0).float() + 0.5 * (d_proxy == 0).float())[upper].sum())
        total += int(upper.sum())
    return agree / total if total else float("nan")


def pair_accuracy(score_0: torch.Tensor, score_1: torch.Tensor, label_0: torch.Tensor, label_1: torch.Tensor) -> float:
    """Fraction of non-tied pairs whose preferred image scores higher (score ties count ½)."""
    keep = label_0 != label_1
    first = label_0[keep] > label_1[keep]
    right = torch.where(first, score_0[keep] > score_1[keep], score_1[keep] > score_0[keep]).float()
    right = right + 0.5 * (score_0[keep] == score_1[keep]).float()
    return float(right.mean()) if keep.any() else float("nan")


@torch.no_grad()
def proxy_report(scorers: dict, pipeline: str | Path | None, held_out_pairs: PreferenceTensors | None,
                 *, seed: int = 0, n_renders: int = 256, progress: bool = False) -> dict:
    """Spearman ρ of each scorer with the oracle on (a) base-model samples of the evaluation prompts
    (the toy suite's evaluation set: 64 held-out captions x 4 seeds, DDIM 20 steps, CFG 3) when a
    pipeline is given, (b) `n_renders` perturbed renders; and pair accuracy on held-out preference pairs."""
    eval_combos = split_combos().test
    sets = {}
    if pipeline is not None:
        eval_cfg = EvalConfig(images_per_prompt=4, steps=20, guidance=3.0, seed=0)
        prompts, seeds = evaluation_set([c.caption for c in eval_combos], eval_cfg)
        images = generate(Backbone.from_pretrained(pipeline), prompts, seeds, steps=eval_cfg.steps,
                          guidance=eval_cfg.guidance, progress=progress, desc="base-model samples")
        sets["base_model_samples"] = (prompts, images)
    images, prompts = perturbed_renders(eval_combos, n_renders, seed)
    sets["perturbed_renders"] = (prompts, images)
    report = {}
    for set_name, (prompts, images) in sets.items():
        oracle = oracle_reward(prompts, images)
        entry = {"n": len(prompts), "oracle_mean": float(oracle.mean())}
        for name, scorer in scorers.items():
            values = scorer.score(prompts, images)
            entry[name] = {"spearman_vs_oracle": round(spearman(values, oracle), 4),
                           "within_prompt_agreement": round(within_prompt_agreement(prompts, values, oracle), 4),
                           "mean": float(values.mean())}
        report[set_name] = entry
    if held_out_pairs is not None and len(held_out_pairs.captions):
        pairs = held_out_pairs
        entry = {"n": len(pairs.captions)}
        for name, scorer in scorers.items():
            entry[name] = round(pair_accuracy(scorer.score(pairs.captions, pairs.image_0),
                                              scorer.score(pairs.captions, pairs.image_1), pairs.label_0, pairs.label_1), 4)
        if pairs.reward_0 is not None:
            entry["oracle"] = round(pair_accuracy(pairs.reward_0, pairs.reward_1, pairs.label_0, pairs.label_1), 4)
        report["held_out_pair_accuracy"] = entry
    return report


def _portable(path: str | Path) -> str:
    """`path` relative to the repository when inside it (shipped files carry no machine paths)."""
    root = Path(__file__).resolve().parents[3]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def build_toy_scorers(out_dir: str | Path, preference_data: str | Path, cfg: ToyScorerConfig = ToyScorerConfig(), *,
                      pipeline: str | Path | None = None, progress: bool = True) -> dict:
    """Train both toy scorers, write them and `scorers.json` to `out_dir` together at the end (a failed or killed
    build changes nothing there); returns the report. The inputs are read first, before minutes of training."""
    prefs = load_preferences(preference_data, cfg.clip.image_size, cfg.max_pairs)
    if pipeline is not None:
        Backbone.from_pretrained(pipeline)
    with staged_directory(out_dir) as out:
        return _build_toy_scorers(out, prefs, preference_data, cfg, pipeline, progress)


def _build_toy_scorers(out: Path, prefs: PreferenceTensors, preference_data: str | Path, cfg: ToyScorerConfig,
                       pipeline: str | Path | None, progress: bool) -> dict:
    timings = {}
    t0 = time.perf_counter()
    clip_model, token_ids, clip_history = train_toy_clip(cfg, progress=progress)
    timings["toy_clip"] = time.perf_counter() - t0
    info = {"trained_on": f"{cfg.renders_per_combo} renders x {len(all_combos())} toy captions",
            "steps": cfg.contrastive_steps, "seed": cfg.seed}
    save_toy_clip(clip_model, cfg.clip, out / ToyClipScorer.filename, token_ids, info)

    t1 = time.perf_counter()
    train_rows, held_rows = split_by_caption(prefs, cfg.held_out_captions, cfg.seed)
    pick_model, pick_history = finetune_toy_pickscore(clip_model, prefs.select(train_rows), cfg, progress=progress)
    timings["toy_pickscore"] = time.perf_counter() - t1
    info = {"fine_tuned_from": ToyClipScorer.filename, "preference_data": _portable(preference_data),
            "pairs": len(train_rows), "held_out_pairs": len(held_rows), "steps": cfg.preference_steps, "seed": cfg.seed}
    save_toy_clip(pick_model, cfg.clip, out / ToyPickScoreScorer.filename, token_ids, info)

    t2 = time.perf_counter()
    scorers = {"toy-clip": ToyClipScorer(weights=out), "toy-pickscore": ToyPickScoreScorer(weights=out)}
    report = proxy_report(scorers, pipeline, prefs.select(held_rows), seed=cfg.seed, n_renders=cfg.report_renders,
                          progress=progress)
    timings["report"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    report["logit_scale_exp"] = {name: round(float(s.backbone.logit_scale.exp()), 3) for name, s in scorers.items()}
    report["file_bytes"] = {name: (out / type(s).filename).stat().st_size for name, s in scorers.items()}
    write_json_atomic(out / "scorers.json", {
        "config": dataclasses.asdict(cfg), "timings_seconds": timings, "report": report,
        "history": {"toy-clip": clip_history, "toy-pickscore": pick_history}, "preference_data": _portable(preference_data),
        "pipeline": None if pipeline is None else _portable(pipeline), "environment": environment(), "created": now()})
    return report
