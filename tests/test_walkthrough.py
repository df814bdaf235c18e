"""docs/architecture.md's "Adding a plugin" walkthrough, executed: each code block is one new file (a method, a
sampler, a scorer) that registers itself when imported, is listed and configured like the shipped plugins, and
does what its docstring says, checked against values worked out by hand."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.core.backbone import Backbone
from bench.toy.paths import SHIPPED_TOY_DIR
from methods.alignment import METHODS
from methods.alignment.base import ImageBatch
from methods.inversion import SAMPLERS
from methods.inversion.base import sampling_levels
from metrics import SCORERS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
BLOCK = re.compile(r"```python\n# (?P<path>[\w/]+\.py)\n(?P<code>.*?)```", re.S)
PROMPT = "a small red circle on the left, black background"


def walkthrough_files() -> dict[str, str]:
    """path -> source of every code block in the walkthrough section (its first line names the file)."""
    text = DOC.read_text()
    section = text[text.index("## Adding a plugin"):]
    section = section[:section.index("\n## ", 1)]
    return {m["path"]: m["code"] for m in BLOCK.finditer(section)}


@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    """Import each walkthrough file as the module it would be in its folder; the registries and sys.modules are
    restored afterwards, so the shipped plugin set is unchanged for other tests."""
    for registry in (METHODS, SAMPLERS, SCORERS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    imported = []
    for path, code in walkthrough_files().items():
        file = tmp_path / Path(path).name
        file.write_text(code)
        module = path.removesuffix(".py").replace("/", ".")
        spec = importlib.util.spec_from_file_location(module, file)
        sys.modules[module] = importlib.util.module_from_spec(spec)
        imported.append(module)
        spec.loader.exec_module(sys.modules[module])
    yield
    for module in imported:
        del sys.modules[module]


def test_each_block_is_one_new_file_in_a_plugin_folder():
    files = walkthrough_files()
    assert sorted(files) == ["methods/alignment/sft_min_snr.py", "methods/inversion/fixed_point.py",
                             "metrics/colourfulness.py"]
    for path in files:
        assert not (ROOT / path).exists(), f"{path} is an example, not a shipped plugin"


def test_the_new_plugins_are_registered_and_listed_with_their_help(plugins):
    assert "sft-min-snr" in METHODS and "fixed-point" in SAMPLERS and "colourfulness" in SCORERS
    runner = CliRunner()
    for name, expected in (("sft-min-snr", "SNR clamp γ"), ("fixed-point", "fixed-point iterations per inversion step"),
                           ("colourfulness", "Config")):
        shown = runner.invoke(app, ["list", name])
        assert shown.exit_code == 0 and name in shown.output, shown.output
        if name != "colourfulness":
            assert expected in " ".join(shown.output.split()), shown.output


def test_min_snr_weights_turn_a_v_space_error_into_the_eps_space_error(plugins, tiny_backbone):
    """Unclamped (γ → ∞) the v-space weight is SNR / (SNR + 1) = ᾱ_t, and ᾱ_t ‖v̂ − v‖² = ‖ε̂ − ε‖²: the loss equals
    plain SFT's in ε-space on the same draws. Clamping only lowers an ε-space weight (min(SNR, γ) / SNR ≤ 1)."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((4, *tiny_backbone.latent_shape), generator=generator)
    batch = ImageBatch(latents, tiny_backbone.encode_prompts([PROMPT] * 4), torch.ones(4, dtype=torch.bool))

    def loss(name: str, **config) -> float:
        cls = METHODS.get(name)
        return cls(cls.Config(**config)).loss(batch, tiny_backbone, None, torch.Generator().manual_seed(1)).loss.item()

    sft_eps = loss("sft", loss_space="eps")
    assert loss("sft-min-snr", gamma=1e12, loss_space="v") == pytest.approx(sft_eps, rel=1e-4)
    assert loss("sft-min-snr", gamma=1e12, loss_space="eps") == pytest.approx(sft_eps, rel=1e-6)
    assert loss("sft-min-snr", gamma=0.5, loss_space="eps") < sft_eps
    with pytest.raises(ValueError, match="gamma must be > 0"):
        METHODS.get("sft-min-snr").Config(gamma=0)


def test_fixed_point_inversion_costs_what_it_declares_and_converges_to_an_exact_inverse(plugins):
    """On the shipped toy pipeline in float64, 10 steps: DDIM's round trip errs by 0.68 (max abs latent), the
    fixed-point inverse by 0.0078 after 3 iterations and 5e-6 after 10 (measured): the implicit step converges."""
    backbone = Backbone.from_pretrained(str(SHIPPED_TOY_DIR / "pipeline"), dtype=torch.float64)
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = sampling_levels(backbone, 10)

    def round_trip_error(name: str, **config) -> float:
        cls = SAMPLERS.get(name)
        sampler = cls(cls.Config(**config))
        backbone.nfe.reset()
        state = sampler.invert(backbone, x0, cond, levels)
        assert backbone.nfe.total == 10 * 2 * sampler.inversion_calls_per_step
        return (sampler.reconstruct(backbone, state, cond) - x0).abs().max().item()

    ddim, three, ten = round_trip_error("ddim"), round_trip_error("fixed-point"), round_trip_error("fixed-point", iterations=10)
    assert SAMPLERS.get("fixed-point")().inversion_calls_per_step == 4  # 1 + 3 iterations by default
    assert three < ddim / 50 and ten < three / 100, (ddim, three, ten)


def test_colourfulness_against_hand_values(plugins):
    """Gray: 0. Pure red (255, 0, 0): rg = 255, yb = 127.5 everywhere, no spread, so M = 0.3·√(255² + 127.5²)
    = 85.530. Half red, half blue: rg ∈ {255, 0} (σ 127.5, μ 127.5), yb ∈ {127.5, −255} (σ 191.25,
    μ −63.75): M = √(127.5² + 191.25²) + 0.3·√(127.5² + 63.75²) = 229.854 + 42.765 = 272.619."""
    gray = torch.full((1, 3, 8, 8), 0.4)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    split = red.clone()
    split[:, :, :, 4:] = 0
    split[:, 2, :, 4:] = 1
    images = torch.cat([gray, red, split])
    scorer = SCORERS.get("colourfulness")()
    scores = scorer.score([PROMPT] * 3, images)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([0.0, 85.5296, 272.6187], abs=1e-3)
    one_by_one = torch.cat([scorer.score([PROMPT], image[None]) for image in images])
    assert torch.equal(one_by_one, scores)
