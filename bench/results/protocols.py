"""The papers' evaluation protocols, as named functions over per-image (or per-pair) scores.

Scores come in evaluation order (`bench.harness.evaluation`): with k images per prompt, image i belongs to
prompt i // k, and a model and its reference are sampled with the same prompts and seeds, so image i
of one is paired with image i of the other. Confidence intervals are percentile-bootstrap 95% CIs
(`bench.core.stats.bootstrap_mean`) whose resampled unit is the prompt, because the k images of one prompt
are not independent.

- `mean_with_ci`: the mean score of a model over a prompt set; with k > 1 it is the ImageReward
  benchmark's mean per prompt, then mean over prompts (Xu et al. 2023, Table 1: 100 prompts x 10 images).
- `hpsv2_benchmark`: the HPS v2 benchmark table, per style mean and chunk std of 100·cos, and "Averaged"
  (Wu et al. 2023; tgxs002/HPSv2 `hpsv2/evaluation.py`).
- `win_rate`: the paired win rate against a reference model, ties counting half (the per-prompt win
  rate vs the base model of the DPO-line papers), or Diffusion-KTO's median-of-5 variant (Li et al.
  2024, Tables 1, 4, 5).
- `preference_accuracy`, `sweep_tie_threshold`: PickScore's preference-prediction accuracy with a tie
  threshold chosen on validation (Kirstain et al. 2023; yuvalkirstain/PickScore
  `trainer/scripts/eval_preference_predictor.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from bench.core.stats import bootstrap_mean, paired_wins

HPSV2_CHUNKS = 10  # hpsv2/evaluation.py L148: 800 images per style in chunks of 80 -> 10 chunk means
# eval_preference_predictor.py L150, as written there (np.linspace(0, 1, 11) differs: 0.30000000000000004)
PICKSCORE_TIE_THRESHOLDS = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1)

Scores = Sequence[float] | torch.Tensor  # (N,) per image or per pair


def _as_vector(values: Scores, what: str) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array, got shape {tuple(values.shape)}")
    return values


def _per_prompt(values: torch.Tensor, images_per_prompt: int, what: str) -> torch.Tensor:
    """(N,) in evaluation order -> (P, k): row p holds the k images of prompt p."""
    if images_per_prompt < 1 or values.numel() % images_per_prompt:
        raise ValueError(f"{what}: {values.numel()} images do not split into prompts of "
                         f"images_per_prompt={images_per_prompt}")
    return values.view(-1, images_per_prompt)


def mean_with_ci(scores: Scores, *, images_per_prompt: int = 1, resamples: int = 2000,
                 seed: int = 0) -> dict[str, float]:
    r"""Mean score over a prompt set with a 95% bootstrap CI over prompts.

    .. math:: \bar s = \frac{1}{P} \sum_p \frac{1}{k} \sum_j s_{p,j}

    With `images_per_prompt` k > 1 this is the ImageReward benchmark's aggregation (mean per prompt,
    then mean over prompts; Xu et al. 2023, Table 1); with equal k it equals the mean over images, and
    only the CI changes (prompts are resampled, not images). Returns `bootstrap_mean`'s
    {"mean", "ci_low", "ci_high", "n"}, n being the number of prompts.
    """
    per_prompt = _per_prompt(_as_vector(scores, "scores"), images_per_prompt, "scores").mean(dim=1)  # (P,)
    return bootstrap_mean(per_prompt, resamples=resamples, seed=seed)


def hpsv2_benchmark(scores_by_style: Mapping[str, Scores]) -> dict:
    """The HPS v2 benchmark table from raw HPS cosines, as `hpsv2/evaluation.py` computes it.

    Reference: tgxs002/HPSv2 @82e7f38 `hpsv2/evaluation.py`, `evaluate_benchmark` L116-151. Per
    style, in prompt order (image `<style>/<idx:05d>.jpg` is prompt idx of `<style>.json`):

    - score per image: 100 · cos(image, prompt) (L141);
    - the style's 800 scores are cut into contiguous chunks of 80, `res[i:i+80]` (L148), giving 10
      chunk means m_1..m_10;
    - reported: mean = mean(m_c) and std = `np.std(m_c)`, the population std (ddof 0) (L150);
    - "Averaged" = the mean of all images' scores over all styles (L149, L151; README's column).

    Input: raw cosines in [-1, 1] per style (`hpsv2.score()`'s scale; the project's `hps` scorer
    reports 100·cos, so divide its scores by 100). Each style's count must be a positive multiple of
    10: the 10 chunks are n/10 images each, which for the benchmark's 800 is exactly the reference's 80.
    (For other n the reference would keep chunks of 80 and could end on a partial chunk; we keep 10
    equal chunks so the std always spreads 10 sub-benchmark means.) The reference skips missing
    images with only a print (L30-38); here every score must be given.

    Returns {"styles": {style: {"mean", "std", "n"}}, "averaged": float, "n": total images}.
    """
    if not scores_by_style:
        raise ValueError("hpsv2_benchmark: no styles given (the benchmark has anime, concept-art, paintings, photo)")
    styles, all_scores = {}, []
    for style, cosines in scores_by_style.items():
        cosines = _as_vector(cosines, f"hpsv2_benchmark style {style!r}")
        if cosines.abs().max() > 1:
            raise ValueError(f"hpsv2_benchmark style {style!r}: expected raw cosines in [-1, 1], got values up to "
                             f"{cosines.abs().max().item():.4g}; pass cos, not 100·cos (divide the `hps` scorer's "
                             "scores by 100)")
        n = cosines.numel()
        if n % HPSV2_CHUNKS:
            raise ValueError(f"hpsv2_benchmark style {style!r}: {n} images is not a multiple of {HPSV2_CHUNKS} "
                             f"(the benchmark has 800 per style, scored in {HPSV2_CHUNKS} chunks)")
        scores = 100 * cosines
        chunk_means = scores.view(HPSV2_CHUNKS, n // HPSV2_CHUNKS).mean(dim=1)  # (10,)
        styles[style] = {"mean": chunk_means.mean().item(), "std": chunk_means.std(correction=0).item(), "n": n}
        all_scores.append(scores)
    everything = torch.cat(all_scores)
    return {"styles": styles, "averaged": everything.mean().item(), "n": everything.numel()}


def win_rate(scores: Scores, reference: Scores, *, images_per_prompt: int = 1, median_of: int | None = None,
             higher_is_better: bool = True, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Paired win rate of a model against a reference on the same prompts and seeds, ties counting half.

    Both inputs are per-image scores (N,) in evaluation order, image i of `scores` paired with image i
    of `reference` (same prompt, same seed).

    - Default (every image): w_{p,j} = 1[s_{p,j} > r_{p,j}] + ½·1[s_{p,j} = r_{p,j}], averaged over the k
      images of prompt p; the win rate is the mean over prompts (= the mean over image pairs).
    - `median_of=m` (Diffusion-KTO, Li et al. 2024, Tables 1, 4, 5: "the median-scoring of 5 images per
      prompt"): for each prompt and each model take the median of its m image scores, then
      w_p = 1[med_p(s) > med_p(r)] + ½·1[med_p(s) = med_p(r)]. m must equal `images_per_prompt` and
      be odd, so that the median is one image's score.

    With `higher_is_better=False` the comparison is reversed. The CI resamples prompts. Returns
    `bootstrap_mean`'s {"mean", "ci_low", "ci_high", "n"}, n being the number of prompts.
    """
    scores, reference = _as_vector(scores, "scores"), _as_vector(reference, "reference")
    if scores.shape != reference.shape:
        raise ValueError(f"win_rate needs paired scores of equal length, got {scores.numel()} and {reference.numel()}")
    model = _per_prompt(scores, images_per_prompt, "scores")  # (P, k)
    ref = _per_prompt(reference, images_per_prompt, "reference")  # (P, k)
    if median_of is not None:
        if median_of != images_per_prompt or median_of % 2 == 0:
            raise ValueError(f"median_of={median_of} needs images_per_prompt={median_of} and an odd count "
                             f"(got images_per_prompt={images_per_prompt})")
        model = model.median(dim=1, keepdim=True).values  # (P, 1); odd m: the middle image's score
        ref = ref.median(dim=1, keepdim=True).values
    wins = paired_wins(model, ref, higher_is_better)  # (P, k) or (P, 1)
    return bootstrap_mean(wins.mean(dim=1), resamples=resamples, seed=seed)


def preference_accuracy(p0: Scores, p1: Scores, labels: Scores, threshold: float) -> float:
    """PickScore's preference-prediction accuracy on image pairs, in [0, 1].

    Reference: yuvalkirstain/PickScore @11584a5 `trainer/scripts/eval_preference_predictor.py`.

    - p0, p1: the predictor's preference probabilities of image 0 and image 1 of each pair, i.e. the
      softmax over the pair of its two scores (`infer_example` L45-47: softmax(logit_scale · cos)).
    - labels: Pick-a-Pic's `label_0` per pair: 1 (image 0 preferred), 0 (image 1), 0.5 (tie)
      (`get_label` L66-73).
    - predicted tie if |p1 − p0| ≤ threshold, else the image with the larger probability (`get_pred`
      L76-83);
    - score 1 if prediction == label (a predicted tie on a tied pair scores 1), 0.5 if exactly one of
      them is a tie, else 0 (`calc_score` L86-93); accuracy = the mean score (`calc_acc` L96-103).
    """
    p0, p1, labels = _as_vector(p0, "p0"), _as_vector(p1, "p1"), _as_vector(labels, "labels")
    if not p0.shape == p1.shape == labels.shape:
        raise ValueError(f"preference_accuracy: p0, p1 and labels differ in length "
                         f"({p0.numel()}, {p1.numel()}, {labels.numel()})")
    if torch.cat([p0, p1]).min() < 0 or torch.cat([p0, p1]).max() > 1:
        raise ValueError("preference_accuracy: p0 and p1 must be preference probabilities in [0, 1] "
                         "(softmax over the pair's two scores), as the tie threshold is swept over 0..1")
    if not torch.isin(labels, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)).all():
        raise ValueError("preference_accuracy: labels must be Pick-a-Pic label_0 values 1, 0 or 0.5 (tie)")
    label_tie = labels == 0.5
    pred_tie = (p1 - p0).abs() <= threshold
    correct = ~label_tie & ~pred_tie & ((p0 > p1) == (labels == 1))
    score = correct.double() + (label_tie & pred_tie).double() + 0.5 * (label_tie ^ pred_tie).double()
    return score.mean().item()


@dataclass(frozen=True)
class TieThreshold:
    """The validation sweep of `sweep_tie_threshold`."""

    threshold: float  # the chosen tie threshold, to apply to the test pairs
    accuracy: float  # validation accuracy at that threshold
    accuracies: dict[float, float]  # validation accuracy per swept threshold


def sweep_tie_threshold(p0_val: Scores, p1_val: Scores, labels_val: Scores,
                        thresholds: Sequence[float] = PICKSCORE_TIE_THRESHOLDS) -> TieThreshold:
    """PickScore's tie-threshold selection: `preference_accuracy` on the validation pairs at each
    threshold (0, 0.1, ..., 1 in the reference, L150), keeping the first best (`np.argmax`, L156).

    The chosen threshold is then applied to the test pairs (L160):
    `preference_accuracy(p0_test, p1_test, labels_test, sweep.threshold)`. The reference runs on the
    `validation_unique` / `test_unique` splits (L151-152) of Pick-a-Pic, v1 by default (L136).
    """
    accuracies = {t: preference_accuracy(p0_val, p1_val, labels_val, t) for t in thresholds}
    best = max(accuracies, key=accuracies.get)  # max keeps the first maximum, as np.argmax does
    return TieThreshold(threshold=best, accuracy=accuracies[best], accuracies=accuracies)
