"""The toy oracle (version 2) cannot be gamed: degenerate images score low, and its maxima are the captions' shapes.

Fast: an adversarial gallery built for every test prompt scores below the base model's mean and at
least 1 below the prompt's ground-truth render; ground-truth renders average >= 5 (5.50 measured);
8-bit rounding and mild pixel noise do not move the score.
Slow: gradient ascent on the pixels from uniform noise ends at the captioned shape, and ground-truth
renders reach 95% of the best score the ascent finds.
"""

from __future__ import annotations

import pytest
import torch

from bench.toy.oracle import BG_SIGMA, ORACLE_VERSION, captioned_coverage, oracle_log_reward, oracle_terms
from bench.toy.world import (
    AREA_PER_RADIUS2,
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    SUPERSAMPLE,
    X_JITTER,
    Y_CENTRE,
    Combo,
    Scene,
    render,
    render_dataset,
    shape_mask,
    split_combos,
)

TEST_COMBOS = split_combos().test


@pytest.fixture(scope="module")
def base_model_mean() -> float:
    """The shipped base model's mean oracle score, sampled here: the first evaluation image of every test prompt.

    The toy suite evaluates 4 images per prompt with seeds 0..255 (image i of prompt j has seed 4j + i,
    `bench.harness.evaluation.evaluation_set`); this samples i = 0 of each prompt (64 images, ~7 s on one core)
    and scores it with this oracle, so the number always matches the oracle under test. Over all 256
    images the mean is 2.60; these 64 give 2.25.
    """
    from bench.core.backbone import Backbone
    from bench.harness.evaluation import evaluation_set
    from bench.harness.sampling import generate
    from bench.harness.suites import get_suite, toy_dir

    suite = get_suite("toy")
    assert list(suite.eval_prompts) == [c.caption for c in TEST_COMBOS]
    prompts, seeds = evaluation_set(list(suite.eval_prompts), suite.eval)
    k = suite.eval.images_per_prompt
    backbone = Backbone.from_pretrained(toy_dir() / "pipeline")
    images = generate(backbone, prompts[::k], seeds[::k], steps=suite.eval.steps, guidance=suite.eval.guidance)
    return oracle_terms(prompts[::k], images)["reward"].mean().item()


def _nominal(combo: Combo, **changes) -> Scene:
    """The combo at its column's centre, vertically centred, mid-size; `changes` override cx, cy, radius."""
    params = {"cx": POSITIONS[combo.position], "cy": Y_CENTRE, "radius": sum(SIZES[combo.size]) / 2, **changes}
    return Scene(combo, **params)


def _with(combo: Combo, **attributes) -> Combo:
    fields = {"size": combo.size, "colour": combo.colour, "shape": combo.shape, "position": combo.position,
              "background": combo.background, **attributes}
    return Combo(**fields)


def adversarial_gallery(combo: Combo) -> dict[str, torch.Tensor]:
    """Degenerate or wrong images for a caption, name -> (k, 3, 32, 32)."""
    frame = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    bg = torch.tensor(BACKGROUNDS[combo.background])[None, :, None, None]
    fg = torch.tensor(COLOURS[combo.colour])[None, :, None, None]
    radius = sum(SIZES[combo.size]) / 2
    stacked = render([_nominal(combo, cy=Y_CENTRE - radius - 0.5), _nominal(combo, cy=Y_CENTRE + radius + 0.5)])
    ys, xs = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
    checker = ((ys + xs) % 2).float()[None, None]
    other_bg = next(b for b in BACKGROUNDS if b != combo.background)
    right = render([_nominal(combo)])
    return {
        "blank background": bg.expand(frame).clone(),
        "full-frame fill": fg.expand(frame).clone(),
        "uniform noise": torch.rand(4, *frame[1:], generator=torch.Generator().manual_seed(0)),
        "wrong colour": render([_nominal(_with(combo, colour=c)) for c in COLOURS if c != combo.colour]),
        "wrong shape": render([_nominal(_with(combo, shape=s)) for s in SHAPES if s != combo.shape]),
        # Two copies stacked in the captioned column (its x centroid is right), composited without overlap.
        "two shapes": (stacked.sum(0, keepdim=True) - bg).clamp(0, 1),
        "wrong column": render([_nominal(_with(combo, position=p)) for p in POSITIONS if p != combo.position]),
        "3x too large": render([_nominal(combo, radius=3 * radius)]),
        "3x too small": render([_nominal(combo, radius=radius / 3)]),
        "checkerboard": checker * fg + (1 - checker) * bg,
        "wrong background": render([_nominal(_with(combo, background=other_bg))]),
        "half-strength shape": (bg + (right - bg) / 2),
    }


def test_adversarial_gallery_scores_below_the_base_model_and_the_ground_truth(base_model_mean):
    truth = oracle_terms([c.caption for c in TEST_COMBOS], render([_nominal(c) for c in TEST_COMBOS]))["reward"]
    worst: dict[str, float] = {}
    for combo, truth_score in zip(TEST_COMBOS, truth.tolist()):
        for name, images in adversarial_gallery(combo).items():
            score = oracle_terms([combo.caption] * len(images), images)["reward"].max().item()
            assert score < base_model_mean, (name, combo.caption, score, base_model_mean)
            assert score <= truth_score - 1.0, (name, combo.caption, score, truth_score)
            worst[name] = max(worst.get(name, 0.0), score)
    # Measured: base 2.25; the worst item is two large squares stacked in the right column (0.57: size 0.21,
    # shape ~0.6, bgok 0.75), then a half-strength shape (0.19) and the wrong column (0.07); the rest < 0.02.
    assert base_model_mean > 1.5 and max(worst.values()) < 1.0, worst


def test_ground_truth_renders_of_every_test_prompt_score_at_least_5():
    images, captions = render_dataset(list(TEST_COMBOS), 4, seed=1)  # as `bench toy build` reports them
    reward = oracle_terms(captions, images)["reward"]
    assert reward.mean() >= 5.0  # measured 5.50; centring (y uniform in [9, 23]) is the only loss
    assert reward.min() > 4.9


def test_rounding_and_mild_noise_do_not_move_the_score():
    """A noise floor keeps faint coverage out of the shape terms: without it, 8-bit rounding of a gray
    background (0.5 -> 128/255) spread ~2 px of soft area over the frame and dropped small triangles from
    5.8 to 0.2, and noise of 0.02 per channel halved the mean render's score."""
    images, captions = render_dataset(list(TEST_COMBOS), 4, seed=1)
    clean = oracle_terms(captions, images)["reward"]
    rounded = oracle_terms(captions, (images * 255).round() / 255)["reward"]
    noise = 0.01 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noisy = oracle_terms(captions, (images + noise).clamp(0, 1))["reward"]
    assert (rounded - clean).abs().max() < 0.02  # measured 0.009
    assert noisy.mean() > clean.mean() - 0.1 and noisy.min() > 4.0  # measured 5.46 (clean 5.50) and 4.98


def test_oracle_version_is_in_the_scorer_description():
    from metrics.oracle import OracleScorer

    described = OracleScorer().describe()
    assert ORACLE_VERSION == 2 and described["version"] == 2 and "version 2" in described["scale"]


def test_differentiable_terms_match_the_scored_ones_and_carry_gradients():
    images, captions = render_dataset(list(TEST_COMBOS[:4]), 2, seed=2)
    noisy = (images.double() + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64)).clamp(0, 1).requires_grad_(True)
    terms = oracle_terms(captions, noisy, differentiable=True)
    scored = oracle_terms(captions, noisy)
    for name, value in terms.items():
        assert value.dtype == torch.float64 and torch.allclose(value.float(), scored[name], rtol=1e-5, atol=1e-6)
    assert torch.allclose(oracle_log_reward(captions, noisy).exp(), terms["reward"])
    (grad,) = torch.autograd.grad(terms["reward"].sum(), noisy)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    noise = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise.requires_grad_(True)
    log_reward = oracle_log_reward(captions, noise)  # finite where R underflows
    (grad,) = torch.autograd.grad(log_reward.sum(), noise)
    assert torch.isfinite(log_reward).all() and torch.isfinite(grad).all() and grad.abs().sum() > 0


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each boolean mask (N, H, W), by label propagation."""
    n, h, w = mask.shape
    labels = torch.where(mask, torch.arange(1, h * w + 1, dtype=torch.float64).view(1, h, w).expand(n, h, w),
                         torch.zeros(()))
    while True:
        spread = torch.nn.functional.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * mask
        if torch.equal(spread, labels):
            break
        labels = spread
    sizes = torch.stack([torch.bincount(row.long().flatten(), minlength=h * w + 1) for row in labels])
    sizes[:, 0] = 0
    return labels == sizes.argmax(1).double()[:, None, None]


def _antialiased_mask(shape: str, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The renderer's coverage (4x4 box filter) of shapes >= 0.5, (N, H, W): the template a foreground
    mask cov > 0.5 of a perfect render would have."""
    coords = (torch.arange(IMAGE_SIZE * SUPERSAMPLE, dtype=torch.float64) + 0.5) / SUPERSAMPLE - 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    fine = shape_mask(shape, cx.view(-1, 1, 1), cy.view(-1, 1, 1), radius.view(-1, 1, 1), ys, xs).double()
    return torch.nn.functional.avg_pool2d(fine[:, None], SUPERSAMPLE)[:, 0] >= 0.5


ASCENT_STARTS = 16
ASCENT_STEPS = 500
PRIOR_WEIGHT = 10.0  # λ at step 0, linearly to 0 at step PRIOR_STEPS
PRIOR_STEPS = 450


@pytest.fixture(scope="module")
def ascent() -> tuple[list[Combo], torch.Tensor]:
    """Gradient ascent on the pixels of 16 uniform-noise images per test prompt (all 64), as one tensor.

    Objective: ln R + λ(step) * mean_p ln near_bg(p), with λ from 10 to 0 over the first 450 steps and
    the last 50 steps on ln R alone. ln R (not R: R underflows to ~1e-12 at noise) has flat regions: the
    Gaussian kernels of near_bg and q give a pixel far from both the background and the b/c segment no
    gradient, and the shape term pushes stray pixels off the segment into them (they stay there, at R
    ~1-3). The added term is the log-domain (geometric-mean) version of bgok, smooth everywhere, which
    pulls every pixel towards the background unless the oracle wants it elsewhere; it knows nothing of
    shape, size or position. Adam (lr 0.1 on logits, pixels = sigmoid(logits)) with beta2 = 0.9: with the
    default 0.999 a pixel whose early gradients were large keeps a large second moment and freezes.
    ~205 s on one core (1,024 images; gradients in chunks of 256 to stay near 1.3 GB).
    """
    combos = [c for c in TEST_COMBOS for _ in range(ASCENT_STARTS)]
    prompts = [c.caption for c in combos]
    bg = torch.tensor([BACKGROUNDS[c.background] for c in combos], dtype=torch.float64)[:, :, None, None]
    noise = torch.rand(len(combos), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    logits = torch.logit(noise.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.1, betas=(0.9, 0.9))
    chunk = 256
    for step in range(ASCENT_STEPS):
        weight = PRIOR_WEIGHT * max(0.0, 1 - step / PRIOR_STEPS)
        optimizer.zero_grad()
        for start in range(0, len(prompts), chunk):
            part = slice(start, start + chunk)
            images = torch.sigmoid(logits[part])
            objective = oracle_log_reward(prompts[part], images)
            if weight:
                objective = objective - weight * (((images - bg[part]) ** 2).sum(1) / (2 * BG_SIGMA**2)).mean((1, 2))
            (-objective.sum()).backward()
        optimizer.step()
    return combos, torch.sigmoid(logits).detach()


def _foreground_ious(combos: list[Combo], foreground: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU of each foreground mask (N, H, W) with every kind at the mask's area, kind -> (N,).

    The template is the renderer's anti-aliased coverage >= 0.5 (what `cov > 0.5` of a perfect render
    is), centred at the mask's centroid give or take half a pixel (the best of 5 x 5 offsets): the
    centroid of a thresholded small shape is itself off by up to that much.
    """
    area = foreground.sum((1, 2)).double()
    ys, xs = torch.meshgrid(torch.arange(IMAGE_SIZE, dtype=torch.float64),
                            torch.arange(IMAGE_SIZE, dtype=torch.float64), indexing="ij")
    mx, my = (foreground * xs).sum((1, 2)) / area, (foreground * ys).sum((1, 2)) / area
    offsets = (-0.5, -0.25, 0.0, 0.25, 0.5)
    ious = {}
    for kind in SHAPES:
        radius = (area / AREA_PER_RADIUS2[kind]).sqrt()
        best = torch.zeros(len(combos), dtype=torch.float64)
        for dx in offsets:
            for dy in offsets:
                template = _antialiased_mask(kind, mx + dx, my + dy, radius)
                iou = (template & foreground).sum((1, 2)) / (template | foreground).sum((1, 2))
                best = torch.maximum(best, iou.double())
        ious[kind] = best
    return ious


@pytest.mark.slow
def test_gradient_ascent_ends_at_the_captioned_shape(ascent):
    """Every run's foreground (cov > 0.5) is the captioned shape, of the captioned size, in the captioned column.

    The IoU is taken against the captioned kind at the foreground's own area (`_foreground_ious`), and the
    area is checked against the size class separately, because at the class's nominal area even
    ground-truth renders fall to IoU 0.46 (a small triangle drawn at the smallest radius of its class),
    and the ascent, once `size` reaches its plateau, stops at the smallest area allowed (there it
    measured IoU 0.52-1.0, 188 runs below 0.7). The IoU is measured on the largest connected component;
    stray pixels elsewhere (the oracle's plateaus do not penalise a speck once iou >= 0.88) are bounded
    separately. Measured: IoU >= 0.75 (mean 0.97; ground-truth renders >= 0.90), 10 runs with 1-2 stray
    pixels, the captioned kind the best fit of the three in all but 5 runs (renders: all but 2 of 1,024,
    small shapes a few pixels across), mean R 5.96.
    """
    combos, images = ascent
    prompts = [c.caption for c in combos]
    cov = captioned_coverage(prompts, images)  # (N, H, W)
    foreground = cov > 0.5
    main = _largest_component(foreground)
    strays = (foreground & ~main).sum((1, 2))
    ious = _foreground_ious(combos, main)
    own = torch.stack([ious[c.shape][i] for i, c in enumerate(combos)])
    other = torch.stack([max(ious[k][i] for k in SHAPES if k != c.shape) for i, c in enumerate(combos)])
    area = main.sum((1, 2)).double()
    area_lo = torch.tensor([AREA_PER_RADIUS2[c.shape] * SIZES[c.size][0] ** 2 for c in combos], dtype=torch.float64)
    area_hi = torch.tensor([AREA_PER_RADIUS2[c.shape] * SIZES[c.size][1] ** 2 for c in combos], dtype=torch.float64)
    xs = torch.arange(IMAGE_SIZE, dtype=torch.float64)
    soft_x = (cov * xs).sum((1, 2)) / cov.sum((1, 2))  # what `pos` scores
    target_x = torch.tensor([POSITIONS[c.position] for c in combos], dtype=torch.float64)
    assert own.min() >= 0.7, [(prompts[i], own[i].item()) for i in (own < 0.7).nonzero()[:, 0].tolist()]
    assert (own <= other).sum() <= len(combos) // 100
    assert ((area >= 0.75 * area_lo) & (area <= 1.25 * area_hi)).all()  # measured 0.86 x lo to 0.95 x hi
    # The ascent climbs `pos` from outside and stops at its plateau's edge, +-2 (measured <= 2.16).
    assert ((soft_x - target_x).abs() <= X_JITTER + 0.5).all()
    assert (strays <= 3).all() and strays.double().mean() < 0.1
    reward = oracle_terms(prompts, images)["reward"]
    assert reward.mean() > 5.5  # the ascent converges rather than stalling in the flat regions


@pytest.mark.slow
def test_ground_truth_renders_reach_95_percent_of_the_ascents_best(ascent):
    """The best of 64 renders per prompt scores >= 95% of the best the ascent found (measured >= 0.994).

    The mean render cannot: the hidden centring term is 1 only for y = 15.5, while renders draw y
    uniformly in [9, 23], so the mean of 64 renders reaches 0.90-0.94 of the ascent's best (0.92 on
    average). The caption does not name y, and a render at the best y does reach the ascent's score
    (the ascent's best per prompt: 5.94-6.00).
    """
    combos, images = ascent
    best = oracle_terms([c.caption for c in combos], images)["reward"].view(len(TEST_COMBOS), ASCENT_STARTS).amax(1)
    renders, captions = render_dataset(list(TEST_COMBOS), 64, seed=0)
    truth = oracle_terms(captions, renders)["reward"].view(len(TEST_COMBOS), 64)
    assert (truth.amax(1) >= 0.95 * best).all(), (truth.amax(1) / best).min()
    assert (truth.mean(1) / best).mean() > 0.88  # measured 0.92 (min 0.90)
    assert best.min() > 5.0
