"""Scorers against independent computations on tiny random models: PickScore, CLIP score (transformers and
open_clip backbones), the aesthetic head; batch invariance; missing-weight messages; the toy scorers'
training code (tiny config) and the shipped toy scorers; `bench eval` and `bench weights`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from bench.cli import app
from bench.core.clip_bpe import clip_bpe_tokenizer
from metrics.aesthetic import HEAD, AestheticHead, AestheticScorer
from metrics.base import MissingWeightsError
from metrics.clip_score import ClipPreprocess, ClipScorer, clip_score, projected
from metrics.pickscore import PickScoreScorer
from metrics.toy_clip import ToyClipConfig, ToyClipScorer, ToyPickScoreScorer, load_toy_clip, save_toy_clip
from metrics.weights import WEIGHTS_ENV

runner = CliRunner()
PROMPTS = ["a cat", "a small red circle on the left, black background", "x", "an elephant in a room full of mirrors"]


@pytest.fixture(autouse=True)
def _no_weights_anywhere(tmp_path_factory, monkeypatch):
    """No $BENCH_WEIGHTS_DIR, an empty hub cache, and no toy build override."""
    import huggingface_hub.constants

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("BENCH_TOY_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))


def _tiny_clip(projection_dim: int = 16, image_size: int = 224, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=image_size, patch_size=32, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=projection_dim, logit_scale_init_value=math.log(100.0))
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    _tiny_clip().save_pretrained(path)
    return path


def _images(n: int = 4, h: int = 240, w: int = 300, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 12, 15, generator=gen)
    return F.interpolate(small, size=(h, w), mode="bilinear")  # smooth images, (N, 3, H, W) in [0, 1]


def _reference_features(model, prompts, images):
    """Projected features computed without the scorers' code: transformers' own image processor and the
    vision/text towers + projections called directly."""
    from transformers import CLIPImageProcessor

    pixels = CLIPImageProcessor()(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
    tokens = clip_bpe_tokenizer(77)(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens.input_ids,
                                                      attention_mask=tokens.attention_mask).pooler_output)
    return image, text


def test_transformers5_features_come_from_pooler_output(tiny_clip_dir):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(tiny_clip_dir))
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
        direct = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    assert not isinstance(out, torch.Tensor) and hasattr(out, "pooler_output")  # transformers 5
    assert torch.allclose(projected(out), direct, atol=1e-6)
    assert projected(direct) is direct  # transformers 4 returned the tensor itself


def test_preprocess_equals_transformers_image_processor():
    from transformers import CLIPImageProcessor

    images = _images(3, 256, 320)
    reference = CLIPImageProcessor()(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
    assert torch.allclose(ClipPreprocess()(images), reference, atol=1e-5)


def test_pickscore_is_exp_logit_scale_times_cosine(tiny_clip_dir):
    scorer = PickScoreScorer(weights=tiny_clip_dir, device="cpu")
    images = _images()
    image, text = _reference_features(scorer.backbone.model, PROMPTS, images)
    cos = (image / image.norm(dim=-1, keepdim=True) * (text / text.norm(dim=-1, keepdim=True))).sum(-1)
    expected = scorer.backbone.model.logit_scale.exp() * cos
    assert torch.allclose(scorer.score(PROMPTS, images), expected, atol=1e-4)
    assert abs(scorer.backbone.model.logit_scale.exp().item() - 100) < 1e-3  # the ×100 is kept
    described = scorer.describe()
    assert described["name"] == "pickscore" and described["backbone"] == "yuvalkirstain/PickScore_v1"
    assert described["weights"][0]["path"] == str(tiny_clip_dir) and len(described["weights"][0]["sha256"]) == 64
    assert set(described["weights"][0]["files"]) >= {"config.json", "model.safetensors"}


def test_pickscore_is_differentiable_in_the_pixels_as_its_features_are(tiny_clip_dir):
    """Reward backpropagation (draft) on PickScore: the gradient of the score reaches the pixels and equals autograd
    through the formula on the model's own features (transformers' processor replaced by ours, which resizes with
    torch ops)."""
    scorer = PickScoreScorer(weights=tiny_clip_dir, device="cpu")
    assert PickScoreScorer.differentiable
    images = _images(n=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(scorer.score(PROMPTS[:2], images).sum(), images)
    pixels = scorer.backbone.preprocess(images)
    model = scorer.backbone.model
    image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    _, text = _reference_features(model, PROMPTS[:2], images.detach())
    cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    (expected,) = torch.autograd.grad((model.logit_scale.exp() * cos).sum(), images)
    assert grad.abs().max() > 0 and torch.allclose(grad, expected, atol=1e-6, rtol=1e-4)


def test_pickscore_from_config_scores_with_random_weights_of_a_given_shape():
    """The random-weight constructor (`bench gpu-check`'s throughput) computes the same score as loading a saved model
    of that config does."""
    scorer = PickScoreScorer.from_config(_tiny_clip().config.to_dict(), seed=0, batch_size=2, device="cpu")
    assert scorer.weight_files == [] and scorer.backbone.name == "random weights"
    images = _images()
    image, text = _reference_features(scorer.backbone.model, PROMPTS, images)
    expected = scorer.backbone.model.logit_scale.exp() * torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert torch.allclose(scorer.score(PROMPTS, images), expected, atol=1e-4)


def test_clip_score_clamps_at_zero_and_scales_by_100(tiny_clip_dir):
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[-1.0, 0.2], [2.0, 0.0], [4.0, 3.0]])
    assert torch.allclose(clip_score(image, text), torch.tensor([0.0, 100.0, 96.0]))

    scorer = ClipScorer(backbone=str(tiny_clip_dir), device="cpu")
    images = _images()
    image, text = _reference_features(scorer.backbone.model, PROMPTS, images)
    expected = 100 * F.cosine_similarity(image, text, dim=-1).clamp(min=0)
    assert torch.allclose(scorer.score(PROMPTS, images), expected, atol=1e-4)
    assert scorer.describe()["backbone"] == str(tiny_clip_dir) and "100 x max(cos" in scorer.describe()["scale"]


def test_clip_score_with_an_open_clip_backbone_file(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))

    scorer = ClipScorer(backbone="tiny-test-clip", weights=tmp_path / "w.safetensors", device="cpu")
    images = _images(3, 40, 32)
    with torch.no_grad():
        expected_image = model.encode_image(ClipPreprocess(size=32)(images))
        expected_text = model.encode_text(open_clip.get_tokenizer("tiny-test-clip")(PROMPTS[:3]))
    expected = 100 * F.cosine_similarity(expected_image, expected_text, dim=-1).clamp(min=0)
    assert torch.allclose(scorer.score(PROMPTS[:3], images), expected, atol=1e-4)
    assert scorer.describe()["backbone_kind"] == "open_clip"


def test_aesthetic_head_layers_and_normalisation(tmp_path):
    head = AestheticHead()
    linear = [(m.in_features, m.out_features) for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert linear == [(768, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    assert [k for k in head.state_dict() if k.endswith("weight")] == [
        "layers.0.weight", "layers.2.weight", "layers.4.weight", "layers.6.weight", "layers.7.weight"]
    head.eval()
    embeddings = torch.randn(5, 768)
    assert head(embeddings).shape == (5,)
    assert torch.allclose(head(embeddings), head(3.7 * embeddings), atol=1e-5)  # L2-normalised first
    assert torch.allclose(head(embeddings), head.layers(F.normalize(embeddings, dim=-1)).squeeze(-1))

    model_dir = tmp_path / "clip-l"
    _tiny_clip(projection_dim=768).save_pretrained(model_dir)
    torch.save(head.state_dict(), tmp_path / HEAD.filename)
    scorer = AestheticScorer(weights=tmp_path / HEAD.filename, clip_weights=model_dir, device="cpu")
    images = _images(3)
    image, _ = _reference_features(scorer.backbone.model, PROMPTS[:3], images)
    assert torch.allclose(scorer.score(PROMPTS[:3], images), head(image), atol=1e-4)
    assert [w["file"] for w in scorer.describe()["weights"]][0] == HEAD.filename


def test_batch_scores_equal_one_by_one(tiny_clip_dir):
    images = _images()
    for scorer in (PickScoreScorer(weights=tiny_clip_dir, device="cpu", batch_size=3),
                   ClipScorer(backbone=str(tiny_clip_dir), device="cpu", batch_size=3), ToyPickScoreScorer()):
        batched = scorer.score(PROMPTS, images)
        single = torch.cat([scorer.score([p], images[i:i + 1]) for i, p in enumerate(PROMPTS)])
        assert torch.allclose(batched, single, atol=1e-4), scorer.name


def test_missing_weights_name_file_repo_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        PickScoreScorer(device="cpu")
    for part in ("yuvalkirstain/PickScore_v1", "--weights pickscore=DIR", f"DIR = ROOT/pickscore and set {WEIGHTS_ENV}=ROOT",
                 "huggingface-cli download yuvalkirstain/PickScore_v1"):
        assert part in str(err.value), part
    with pytest.raises(MissingWeightsError) as err:
        AestheticScorer(device="cpu")
    for part in ("'sac+logos+ava1-l14-linearMSE.pth'", "camenduru/improved-aesthetic-predictor", "--weights aesthetic=DIR"):
        assert part in str(err.value), part
    with pytest.raises(MissingWeightsError, match="--weights clip=DIR"):
        ClipScorer(device="cpu")
    with pytest.raises(MissingWeightsError, match="bench toy build-scorers"):
        ToyClipScorer(weights=tmp_path / "nowhere")


def test_pickscore_loss_matches_its_definition():
    from bench.harness.toy_build.scorers import pickscore_loss

    text = F.normalize(torch.randn(3, 8), dim=-1)
    image_0, image_1 = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(math.log(20.0))
    label_0, label_1 = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    logits = 20 * torch.stack([(text * image_0).sum(-1), (text * image_1).sum(-1)], -1)
    p = logits.softmax(-1)
    per_pair = torch.stack([-p[0, 0].log(), -p[1, 1].log(), -0.5 * p[2].log().sum() + math.log(0.5)])
    weights = torch.tensor([1 / 2, 1 / 2, 1 / 4])  # pairs per caption 2, 2, 4
    expected = (per_pair * weights / weights.sum()).sum()
    loss = pickscore_loss(text, image_0, image_1, scale, label_0, label_1, torch.tensor([2.0, 2.0, 4.0]))
    assert torch.allclose(loss, expected)
    same = pickscore_loss(text, image_0, image_0, scale, label_0[2:], label_1[2:], torch.ones(1))
    assert abs(same.item()) < 1e-6  # a tie predicted as a tie costs nothing


def test_proxy_report_statistics_by_hand():
    from bench.harness.toy_build.scorers import pair_accuracy, spearman, within_prompt_agreement

    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(0.8)  # 1 − 6·2/60
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    # pairs: right, wrong, score tie (½), label tie (dropped) -> 1.5 / 3
    assert pair_accuracy(torch.tensor([2.0, 1, 5, 0]), torch.tensor([1.0, 2, 5, 9]), torch.tensor([1.0, 1, 1, 0.5]),
                         torch.tensor([0.0, 0, 0, 0.5])) == pytest.approx(0.5)
    # prompt a: oracle order 1 < 2 < 3, proxy gets 2 of its 3 pairs right; prompt b: 1 of 1 -> 3 / 4
    assert within_prompt_agreement(["a", "a", "a", "b", "b"], torch.tensor([1.0, 3, 2, 0, 1]),
                                   torch.tensor([1.0, 2, 3, 0, 1])) == pytest.approx(0.75)


def test_toy_scorer_training_runs_deterministically_on_a_tiny_config(tmp_path):
    from bench.harness.toy_build.scorers import ToyScorerConfig, build_toy_scorers, train_toy_clip
    from bench.toy.paths import SHIPPED_TOY_DIR

    tiny = ToyClipConfig(vision_width=16, vision_layers=1, text_width=16, text_layers=1, heads=2, embed_dim=16)
    cfg = ToyScorerConfig(clip=tiny, renders_per_combo=1, contrastive_steps=3, contrastive_batch=16,
                          preference_steps=2, preference_batch=4, max_pairs=48, report_renders=32)
    report = build_toy_scorers(tmp_path, SHIPPED_TOY_DIR / "prefs.parquet", cfg, pipeline=None, progress=False)
    assert math.isfinite(report["perturbed_renders"]["toy-clip"]["spearman_vs_oracle"])
    assert 0 <= report["held_out_pair_accuracy"]["toy-pickscore"] <= 1  # the metrics themselves: next test
    saved = json.loads((tmp_path / "scorers.json").read_text())
    assert saved["config"]["contrastive_steps"] == 3 and saved["timings_seconds"]["total"] > 0
    clip, _, info = load_toy_clip(tmp_path / "toy-clip.safetensors")
    pick, _, _ = load_toy_clip(tmp_path / "toy-pickscore.safetensors")
    assert info["steps"] == 3
    assert not torch.equal(clip.visual.proj, pick.visual.proj)  # fine-tuned
    again, token_ids, _ = train_toy_clip(cfg, progress=False)
    save_toy_clip(again, tiny, tmp_path / "again.safetensors", token_ids, info)
    # deterministic, down to the file's bytes (its SHA256 goes into run records)
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "toy-clip.safetensors").read_bytes()


def test_shipped_toy_scorers_load_small_and_prefer_the_right_caption():
    from bench.toy.world import render_dataset, split_combos

    held_out = split_combos().test
    images, captions = render_dataset(held_out, 1, seed=3)  # (64, 3, 32, 32)
    wrong = captions[1:] + captions[:1]
    for cls in (ToyClipScorer, ToyPickScoreScorer):
        scorer = cls()
        path = scorer.weight_files[0][1]
        assert path.stat().st_size < 3 * 2**20, path
        right_scores, wrong_scores = scorer.score(captions, images), scorer.score(wrong, images)
        assert torch.isfinite(right_scores).all()
        assert (right_scores > wrong_scores).float().mean() > 0.8, cls.name


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_eval_missing_weights_exits_2_and_writes_nothing(in_tmp):
    result = runner.invoke(app, ["eval", "--metrics", "oracle,pickscore", "--toy-renders", "4", "--json", "out.json"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "yuvalkirstain/PickScore_v1" in message and "--weights pickscore=DIR" in message
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--metrics", "oracle,clipp", "--toy-renders", "4"], "unknown metric 'clipp'; did you mean 'clip'?"),
    (["--metrics", "oracle", "--toy-renders", "4", "--weights", "clip=/x"], "'clip' is not in --metrics"),
    (["--metrics", "oracle", "--toy-renders", "4", "--weights", "oracle=/x"], "the oracle scorer takes no weights"),
    (["--metrics", "oracle"], "give either --images DIR"),
    (["--metrics", "oracle", "--images", "nope", "--prompts", "p.txt"], "not a directory"),
    (["--metrics", "oracle", "--toy-renders", "2", "--toy-samples", "2"], "give either --images DIR"),
    (["--metrics", "oracle", "--toy-renders", "0"], "--toy-renders must be >= 1, got 0"),
    (["--metrics", "oracle", "--toy-renders", "2", "--json", "."], "--json .: is a directory; give a file path"),
    (["--metrics", "oracle", "--toy-renders", "2", "--pipeline", "."], "--pipeline applies to --toy-samples"),
    (["--metrics", "oracle", "--toy-samples", "2", "--pipeline", "nope"], "--pipeline nope: not a directory"),
    (["--metrics", "oracle", "--toy-renders", "2", "--metric-arg", "hps.version=v2.0"],
     "--metric-arg hps.version=v2.0: metric 'hps' is not in --metrics (oracle)"),
    (["--metrics", "hps", "--toy-renders", "2", "--metric-arg", "hps.version=v3"],
     "--metric-arg hps: unknown HPS version 'v3'; known: v2.0, v2.1"),
    (["--metrics", "hps", "--toy-renders", "2", "--metric-arg", "hps.version=v2.0"], "HPS_v2_compressed.pt"),
    (["--metrics", "hps", "--toy-renders", "2", "--hps-version", "v2.0"], "HPS_v2_compressed.pt"),  # deprecated alias
])
def test_eval_bad_input_exits_2(in_tmp, args, message):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert list(in_tmp.iterdir()) == []


def test_eval_clip_backbone_by_metric_arg_and_by_its_deprecated_flag(in_tmp, tiny_clip_dir):
    """`--metric-arg clip.backbone=DIR` reaches the scorer and the record; `--clip-backbone DIR` does the same,
    saying what replaces it."""
    outputs = {}
    for name, option in (("metric-arg", ["--metric-arg", f"clip.backbone={tiny_clip_dir}"]),
                         ("deprecated", ["--clip-backbone", str(tiny_clip_dir)])):
        result = runner.invoke(app, ["eval", "--metrics", "clip", "--toy-renders", "3", *option, "--json", f"{name}.json",
                                     "-q"])
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
        record = json.loads((in_tmp / f"{name}.json").read_text())
        assert record["scorer_configs"]["clip"] == {"backbone": str(tiny_clip_dir), "batch_size": 32}
        assert record["scorers"]["clip"]["backbone"] == str(tiny_clip_dir)
    assert "deprecated" not in outputs["metric-arg"]
    assert (f"deprecated: --clip-backbone is replaced by --metric-arg clip.backbone={tiny_clip_dir}"
            in " ".join(outputs["deprecated"].split()))
    scores = [json.loads((in_tmp / f"{name}.json").read_text())["scores"]["clip"] for name in outputs]
    assert scores[0] == scores[1]


def test_eval_toy_renders_and_an_image_folder(in_tmp):
    result = runner.invoke(app, ["eval", "--metrics", "oracle,toy-clip,toy-pickscore", "--toy-renders", "24",
                                 "--json", "scores.json", "--save-images", "imgs", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((in_tmp / "scores.json").read_text())
    assert set(record["scores"]) == {"oracle", "toy-clip", "toy-pickscore"} and len(record["prompts"]) == 24
    assert all(math.isfinite(v) for values in record["scores"].values() for v in values)
    assert record["aggregates"]["oracle"]["mean"] > 4 and set(record["components"]["oracle"]) >= {"centring"}
    toy = record["scorers"]["toy-clip"]["weights"][0]
    assert toy["file"] == "toy-clip.safetensors" and len(toy["sha256"]) == 64
    assert record["scorers"]["toy-pickscore"]["higher_is_better"] is True
    assert record["scorers"]["toy-clip"]["backbone_kind"] == "open_clip"
    assert sorted(p.name for p in (in_tmp / "imgs").iterdir())[:2] == ["00000.png", "00001.png"]

    # the saved renders re-scored from the folder: same prompts, same scores up to 8-bit rounding
    result = runner.invoke(app, ["eval", "-m", "oracle,toy-clip", "--images", "imgs", "--prompts", "imgs/prompts.txt",
                                 "--json", "folder.json", "--batch-size", "5", "-q"])
    assert result.exit_code == 0, result.output
    folder = json.loads((in_tmp / "folder.json").read_text())
    assert folder["files"] == [f"{i:05d}.png" for i in range(24)] and folder["prompts"] == record["prompts"]
    for name, tolerance in (("oracle", 0.05), ("toy-clip", 1.0)):  # of 6 and of 100
        assert torch.allclose(torch.tensor(folder["scores"][name]), torch.tensor(record["scores"][name]), atol=tolerance)

    # unpadded names (0.png ... 23.png) are read in natural order, so the prompt file still lines up
    for path in (in_tmp / "imgs").glob("*.png"):
        path.rename(path.with_name(f"{int(path.stem)}.png"))
    result = runner.invoke(app, ["eval", "-m", "oracle", "--images", "imgs", "--prompts", "imgs/prompts.txt",
                                 "--json", "natural.json", "-q"])
    assert result.exit_code == 0, result.output
    natural = json.loads((in_tmp / "natural.json").read_text())
    assert natural["files"][:3] == ["0.png", "1.png", "2.png"] and natural["scores"]["oracle"] == folder["scores"]["oracle"]


def test_weights_lists_every_scorer_spec(in_tmp):
    result = runner.invoke(app, ["weights", "--json", "weights.json"])
    assert result.exit_code == 0, result.output
    rows = json.loads((in_tmp / "weights.json").read_text())["weights"]
    by_file = {(r["metric"], r["file"]): r for r in rows}
    assert by_file[("pickscore", "yuvalkirstain/PickScore_v1 (model directory)")]["path"] is None  # missing
    assert by_file[("aesthetic", "sac+logos+ava1-l14-linearMSE.pth")]["path"] is None
    shipped = by_file[("toy-clip", "toy-clip.safetensors")]
    assert shipped["path"] and len(shipped["sha256"]) == 64 and 0 < shipped["bytes"] < 3 * 2**20
    assert ("oracle", None) in by_file
    assert "missing" in result.output and "toy-pickscore.safetensors" in result.output


def test_eval_toy_samples_of_the_shipped_pipeline(in_tmp):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 2 of a 32x32 UNet: a second thread only adds waiting (10x on a busy 2-core box)
    try:
        result = runner.invoke(app, ["eval", "-m", "oracle", "--toy-samples", "2", "--seed", "5", "--json", "s.json", "-q"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    record = json.loads((in_tmp / "s.json").read_text())
    assert record["source"]["seeds"] == [5, 6] and record["source"]["steps"] == 20
    assert record["source"]["pipeline"].endswith("pipeline") and len(record["scores"]["oracle"]) == 2
    assert all(0 <= v <= 6 for v in record["scores"]["oracle"])


def test_list_shows_every_scorer():
    from metrics import SCORERS

    expected = {"pickscore", "imagereward", "hps", "clip", "aesthetic", "oracle", "toy-clip", "toy-pickscore"}
    assert set(SCORERS.names()) >= expected
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and all(name in result.output for name in expected)
