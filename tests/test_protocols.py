"""The papers' evaluation protocols on small synthetic scores, against values worked out by hand."""

from __future__ import annotations

import random

import pytest
import torch

from bench.core.stats import bootstrap_mean, paired_comparison
from bench.results.protocols import (
    PICKSCORE_TIE_THRESHOLDS,
    hpsv2_benchmark,
    mean_with_ci,
    preference_accuracy,
    sweep_tie_threshold,
    win_rate,
)


def test_mean_with_ci_is_the_mean_over_prompts_of_the_mean_per_prompt():
    # one image per prompt: (1 + 2 + 3 + 6) / 4 = 3
    flat = mean_with_ci([1.0, 2.0, 3.0, 6.0])
    assert flat["mean"] == pytest.approx(3.0) and flat["n"] == 4
    assert 1.0 <= flat["ci_low"] <= 3.0 <= flat["ci_high"] <= 6.0
    # ImageReward's aggregation, 2 images per prompt: prompt means (1+3)/2 = 2, (2+2)/2 = 2, (10+0)/2 = 5;
    # mean over prompts (2 + 2 + 5) / 3 = 3, and the bootstrap resamples the 3 prompts, not the 6 images
    grouped = mean_with_ci([1.0, 3.0, 2.0, 2.0, 10.0, 0.0], images_per_prompt=2)
    assert grouped["mean"] == pytest.approx(3.0) and grouped["n"] == 3
    assert grouped == bootstrap_mean(torch.tensor([2.0, 2.0, 5.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="5 images do not split into prompts of images_per_prompt=2"):
        mean_with_ci([1.0] * 5, images_per_prompt=2)


def _style(chunk_values: list[float]) -> list[float]:
    """800 cosines: chunk c (images 80c .. 80c+79) all equal to chunk_values[c]."""
    return [v for v in chunk_values for _ in range(80)]


def test_hpsv2_benchmark_four_styles():
    scores = {
        # chunk means of 100·cos: 20, 21, ..., 29 -> mean 24.5;
        # population std = sqrt(sum (x - 24.5)^2 / 10) = sqrt(2 (0.25 + 2.25 + 6.25 + 12.25 + 20.25) / 10)
        #                = sqrt(8.25) = 2.872281; the sample std (ddof 1) would be sqrt(82.5 / 9) = 3.027650
        "anime": _style([0.20 + 0.01 * c for c in range(10)]),
        # images alternate 0.25, 0.27: every contiguous chunk of 80 averages 26 -> std 0
        # (chunks formed by stride, images i % 10, would be all-25 or all-27 and give std 1)
        "concept-art": [0.25 if i % 2 == 0 else 0.27 for i in range(800)],
        # constant 0.26 -> mean 26, std 0
        "paintings": [0.26] * 800,
        # first half 0.30, second half 0.20: chunk means 30 x5, 20 x5 -> mean 25, population std 5
        "photo": [0.30] * 400 + [0.20] * 400,
    }
    table = hpsv2_benchmark(scores)
    styles = table["styles"]
    assert list(styles) == ["anime", "concept-art", "paintings", "photo"]
    assert styles["anime"]["mean"] == pytest.approx(24.5)
    assert styles["anime"]["std"] == pytest.approx(8.25 ** 0.5)
    assert styles["concept-art"]["mean"] == pytest.approx(26.0) and styles["concept-art"]["std"] == pytest.approx(0, abs=1e-9)
    assert styles["paintings"]["mean"] == pytest.approx(26.0) and styles["paintings"]["std"] == pytest.approx(0, abs=1e-9)
    assert styles["photo"]["mean"] == pytest.approx(25.0) and styles["photo"]["std"] == pytest.approx(5.0)
    assert all(style["n"] == 800 for style in styles.values())
    # "Averaged": the mean over all 3200 images = (24.5 + 26 + 26 + 25) / 4 = 25.375 (800 images per style)
    assert table["averaged"] == pytest.approx(25.375) and table["n"] == 3200


def test_hpsv2_benchmark_any_multiple_of_ten_and_clear_errors():
    # 20 images -> 10 chunks of 2: every chunk is (0.1 + 0.3) / 2 = 0.2 -> mean 20, std 0
    small = hpsv2_benchmark({"photo": [0.1, 0.3] * 10})
    assert small["styles"]["photo"]["mean"] == pytest.approx(20.0) and small["styles"]["photo"]["std"] == pytest.approx(0)
    # unequal counts: "Averaged" weighs images, (10 x 20 + 20 x 30) / 30 = 26.6667, not (20 + 30) / 2
    mixed = hpsv2_benchmark({"anime": [0.2] * 10, "photo": [0.3] * 20})
    assert mixed["averaged"] == pytest.approx(800 / 30)
    with pytest.raises(ValueError, match="795 images is not a multiple of 10"):
        hpsv2_benchmark({"anime": [0.2] * 795})
    with pytest.raises(ValueError, match="expected raw cosines in \\[-1, 1\\].*not 100·cos"):
        hpsv2_benchmark({"anime": [27.3] * 800})
    with pytest.raises(ValueError, match="no styles"):
        hpsv2_benchmark({})


def test_win_rate_counts_ties_half_and_follows_the_direction():
    scores, reference = [3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 3.0, 4.0]
    # win, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    result = win_rate(scores, reference)
    assert result["mean"] == pytest.approx(0.625) and result["n"] == 4
    # the same as the per-image win rate of bench.core.stats with one image per prompt
    assert result == paired_comparison(torch.tensor(scores), torch.tensor(reference))[0]
    # lower is better: loss, tie, win, loss -> (0 + 0.5 + 1 + 0) / 4 = 0.375
    assert win_rate(scores, reference, higher_is_better=False)["mean"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="equal length"):
        win_rate([1.0, 2.0], [1.0])


def test_kto_median_of_five_differs_from_every_image():
    model = [0.0, 0.0, 6.0, 6.0, 6.0,   # prompt 0
             4.0, 4.0, 4.0, 4.0, 4.0]   # prompt 1
    reference = [5.0, 5.0, 5.0, 9.0, 9.0,
                 4.0, 1.0, 9.0, 9.0, 0.0]
    # every image: prompt 0 -> 0<5, 0<5, 6>5, 6<9, 6<9 = 1/5 = 0.2;
    #              prompt 1 -> tie, 4>1, 4<9, 4<9, 4>0 = (0.5 + 1 + 0 + 0 + 1)/5 = 0.5; mean (0.2 + 0.5)/2 = 0.35
    every = win_rate(model, reference, images_per_prompt=5)
    assert every["mean"] == pytest.approx(0.35) and every["n"] == 2
    # median of 5: prompt 0 -> median(0,0,6,6,6) = 6 > median(5,5,5,9,9) = 5: win 1;
    #              prompt 1 -> median 4 = median(0,1,4,9,9) = 4: tie 0.5; mean (1 + 0.5)/2 = 0.75
    median = win_rate(model, reference, images_per_prompt=5, median_of=5)
    assert median["mean"] == pytest.approx(0.75) and median["n"] == 2
    # both resample the 2 prompts
    assert every == bootstrap_mean(torch.tensor([0.2, 0.5], dtype=torch.float64))
    assert median == bootstrap_mean(torch.tensor([1.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="median_of=5 needs images_per_prompt=5"):
        win_rate(model, reference, median_of=5)
    with pytest.raises(ValueError, match="odd"):
        win_rate(model[:8], reference[:8], images_per_prompt=4, median_of=4)


# (p0, p1, Pick-a-Pic label_0) with |p1 - p0| exact in binary: 0.5, 0.5, 0, 0.25, 0.125
PAIRS = [(0.75, 0.25, 1.0),      # image 0 clearly preferred, label image 0
         (0.25, 0.75, 1.0),      # predicts image 1, label image 0
         (0.5, 0.5, 0.5),        # identical probabilities, tied label
         (0.625, 0.375, 0.5),    # leans image 0, tied label
         (0.5625, 0.4375, 0.0)]  # leans image 0, label image 1


def _columns(pairs):
    return [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]


def test_preference_accuracy_tie_rules():
    p0, p1, labels = _columns(PAIRS)
    # t = 0: only pair 3 is a predicted tie (|0| <= 0).
    #   right 1, wrong 0, tie on tie 1, "0" on tie 0.5, "0" on "1" 0 -> 2.5 / 5 = 0.5
    assert preference_accuracy(p0, p1, labels, 0) == pytest.approx(0.5)
    # t = 0.25: pairs 3, 4 (|0.25| <= 0.25, inclusive) and 5 (0.125) are predicted ties.
    #   1, 0, 1, tie on tie 1, tie on "1" 0.5 -> 3.5 / 5 = 0.7
    assert preference_accuracy(p0, p1, labels, 0.25) == pytest.approx(0.7)
    # t = 1: everything is a predicted tie: 0.5, 0.5, 1, 1, 0.5 -> 3.5 / 5 = 0.7
    assert preference_accuracy(p0, p1, labels, 1) == pytest.approx(0.7)
    # the reference compares floats as written: |0.35 - 0.65| = 0.30000000000000004 > 0.3 is no tie,
    # so "0" on a tied label scores 0.5 (a tie would have scored 1)
    assert preference_accuracy([0.65], [0.35], [0.5], 0.3) == 0.5
    with pytest.raises(ValueError, match="label_0 values 1, 0 or 0.5"):
        preference_accuracy([0.6], [0.4], [0.7], 0.1)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        preference_accuracy([21.3], [20.1], [1.0], 0.1)


def test_sweep_picks_the_first_best_threshold_on_validation_and_applies_it_to_test():
    sweep = sweep_tie_threshold(*_columns(PAIRS))
    assert tuple(sweep.accuracies) == PICKSCORE_TIE_THRESHOLDS
    # t = 0, 0.1: ties {3} -> 0.5; t = 0.2: ties {3, 5}: 1 + 0 + 1 + 0.5 + 0.5 = 3 -> 0.6;
    # t = 0.3 .. 0.4: ties {3, 4, 5} -> 0.7; t >= 0.5: every pair a tie -> 0.7. First maximum: 0.3
    expected = {0: 0.5, 0.1: 0.5, 0.2: 0.6, 0.3: 0.7, 0.4: 0.7, 0.5: 0.7, 0.6: 0.7, 0.7: 0.7, 0.8: 0.7, 0.9: 0.7, 1: 0.7}
    assert sweep.accuracies == pytest.approx(expected)
    assert sweep.threshold == 0.3 and sweep.accuracy == pytest.approx(0.7)
    # test pairs at t = 0.3: |0.8| -> "0" on "0" = 1; |0.2 - eps| -> tie on tie = 1; |0.6| -> "1" on "0" = 0 -> 2/3
    test = preference_accuracy([0.9, 0.6, 0.2], [0.1, 0.4, 0.8], [1.0, 0.5, 1.0], sweep.threshold)
    assert test == pytest.approx(2 / 3)


def _pair_score(p0: float, p1: float, label_0: float, threshold: float) -> float:
    """An independent per-pair reading of PickScore's rule, written as prose would say it."""
    label = "tie" if label_0 == 0.5 else ("image0" if label_0 == 1 else "image1")
    if abs(p1 - p0) <= threshold:
        prediction = "tie"
    else:
        prediction = "image0" if p0 > p1 else "image1"
    if prediction == label:
        return 1.0
    return 0.5 if "tie" in (prediction, label) else 0.0


def test_preference_accuracy_matches_a_per_pair_loop_on_random_pairs():
    rng = random.Random(0)
    p0 = [rng.random() for _ in range(300)]
    p1 = [1 - p for p in p0]
    labels = [rng.choice([0.0, 0.5, 1.0]) for _ in range(300)]
    for threshold in PICKSCORE_TIE_THRESHOLDS:
        loop = sum(_pair_score(a, b, y, threshold) for a, b, y in zip(p0, p1, labels)) / len(labels)
        assert preference_accuracy(p0, p1, labels, threshold) == pytest.approx(loop, abs=1e-12)
