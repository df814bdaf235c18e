"""HPS v2 and ImageReward on tiny random architectures: formulas, preprocessing, batching, weights.

The full-size models against the `hpsv2` and `image-reward` packages: `tox -e refcheck` (tests/refcheck).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import metrics.hps as hps
import metrics.imagereward as ir
from metrics import SCORERS, MissingWeightsError
from metrics.weights import WEIGHTS_ENV, load_state_dict

TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=224, layers=2, width=32, head_width=16, patch_size=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)
TINY_VISION = dict(image_size=224, patch_size=32, vision_width=32, vision_layers=2, vision_heads=2)
TINY_BLIP = ir.ImageRewardArchitecture(**TINY_VISION, text_width=32, text_layers=2, text_heads=2, text_intermediate=64,
                                       vocab_size=ir.BERT_VOCAB_SIZE + 2, max_position_embeddings=64)
# BLIP's configs/med_config.json, as THUDM/ImageReward ships it (bert-base-uncased's config.json plus [DEC], [ENC] and
# cross-attention; encoder_width is overwritten with the ViT's width by BLIP_Pretrain); shared with the refcheck run.
MED_CONFIG = json.loads((Path(__file__).parent / "refcheck" / "med_config.json").read_text())
TINY_MED_CONFIG = {**MED_CONFIG, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 64}
MEAN = torch.tensor(hps.OPENAI_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(hps.OPENAI_STD).view(1, 3, 1, 1)
WORDS = "a an the of in on with and red blue green cat dog car tree house sky sunset painting photo city".split()
PROMPTS = ["a red car", "a cat on a tree", "a red car", "a painting of a city at sunset", "the sky"]


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory):
    """A generated WordPiece vocabulary of bert-base-uncased's size and special-token ids (not its words)."""
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = list(dict.fromkeys(specials + WORDS + letters + [f"##{c}" for c in letters] + list(".,!?'")))
    tokens += [f"[filler{i}]" for i in range(ir.BERT_VOCAB_SIZE - len(tokens))]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def _spread(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every weight at unit-variance-preserving scale, so that scores differ between inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param[0].numel()))
            elif "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return module


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """8-bit-exact images in [0, 1], so ImageReward's quantisation is the identity on them."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=gen).float() / 255


@pytest.fixture(scope="module")
def hps_scorer():
    scorer = hps.HPSScorer.from_config(TINY_CLIP, seed=0, batch_size=2)
    _spread(scorer.model, seed=1)
    return scorer


@pytest.fixture(scope="module")
def ir_scorer(bert_vocab):
    scorer = ir.ImageRewardScorer.from_config(TINY_BLIP, bert_vocab, seed=0, batch_size=2)
    _spread(scorer.model, seed=1)
    return scorer


# --- HPS ------------------------------------------------------------------------------------------------------

def test_registered():
    assert SCORERS.get("hps") is hps.HPSScorer and SCORERS.get("imagereward") is ir.ImageRewardScorer
    for cls in (hps.HPSScorer, ir.ImageRewardScorer):
        assert cls.higher_is_better is True and cls.scale
    assert "100 x cosine" in hps.HPSScorer.scale


def test_hps_pads_the_longest_side_to_224_centred_instead_of_cropping():
    # 9 x 32 image: grey with a green 4-column band on the left. Longest side 32 -> 224 (x7): 63 x 224,
    # then 161 black rows, 80 above and 81 below.
    image = torch.full((1, 3, 9, 32), 0.5)
    image[:, :, :, :4] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    padded = hps.resize_longest_and_pad(image, 224)
    assert padded.shape == (1, 3, 224, 224)
    assert torch.all(padded[..., :80, :] == 0) and torch.all(padded[..., 143:, :] == 0)  # black bars, 80 / 81
    content = padded[..., 80:143, :]
    # The band (source columns 0-3 -> 0-27) survives at the left edge; bicubic rings within 2 source pixels
    # (14 columns) of its border.
    assert torch.allclose(content[0, :, :, :12], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 63, 12),
                          atol=1e-4)
    assert torch.allclose(content[..., 44:], torch.full_like(content[..., 44:], 0.5), atol=1e-4)
    # A centre crop (CLIP's / ImageReward's preprocessing) would instead fill the square and cut the band off.
    cropped = T.CenterCrop(224)(T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(image))
    assert (cropped == 0).sum() == 0 and not torch.any(cropped[0, 1] > 0.9)
    # Portrait: the bars go left (80) and right (81). The normalised input holds -mean/std in the bars.
    tall = hps.resize_longest_and_pad(image.transpose(-1, -2), 224)
    assert torch.all(tall[..., :80] == 0) and torch.all(tall[..., 143:] == 0)
    assert torch.allclose(tall[0, :, :12, 80:143], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 12, 63),
                          atol=1e-4)
    normalised = hps.hps_preprocess(image)
    assert torch.allclose(normalised[..., :80, :], (-MEAN / STD).expand(1, 3, 80, 224))
    # Already 224 x 224: untouched except normalisation.
    square = _images(1, 224, 224)
    assert torch.equal(hps.resize_longest_and_pad(square), square)


def test_hps_score_is_100_times_the_cosine(hps_scorer):
    images = _images(3, 224, 224)
    prompts = PROMPTS[:3]
    model = hps_scorer.model
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=77)(prompts)
    with torch.no_grad():
        image_emb = model.visual((images - MEAN) / STD)
        text_emb = model.encode_text(tokens)
    expected = 100 * F.cosine_similarity(image_emb, text_emb, dim=-1)
    scores = hps_scorer.score(prompts, images)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-4)
    assert scores.abs().max() <= 100 and scores.std() > 1  # distinct per image


def test_hps_batches_equal_single_images(hps_scorer):
    images = _images(5, 40, 64, seed=3)
    batched = hps_scorer.score(PROMPTS, images)  # batch_size 2, prompts repeated
    singles = torch.cat([hps_scorer.score([p], images[i:i + 1]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="expected 4 RGB images"):
        hps_scorer.score(PROMPTS[:4], images)


# --- ImageReward ------------------------------------------------------------------------------------------------

def test_imagereward_head_constants_and_max_length():
    assert ir.REWARD_MEAN == 0.16717362830052426 and ir.REWARD_STD == 1.0333394966054072
    assert ir.MAX_TEXT_TOKENS == 35
    head = ir.RewardMLP(768)
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    assert [m.p for m in head.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.Dropout)) for m in head.layers)  # no activations
    assert sorted({k.rsplit(".", 1)[0] for k in head.state_dict()}) == [f"layers.{i}" for i in (0, 2, 4, 6, 7)]
    # Linear all the way: the head is one affine map.
    x = torch.randn(4, 768)
    head.eval()
    zero = head(torch.zeros(1, 768))
    torch.testing.assert_close(head(x) + head(-x), 2 * zero.expand(4, 1), rtol=1e-4, atol=1e-5)


def test_imagereward_architecture_from_med_config():
    assert ir.ImageRewardArchitecture.from_med_config(MED_CONFIG) == ir.ImageRewardArchitecture()  # v1.0: ViT-L + BERT-base
    assert ir.ImageRewardArchitecture.from_med_config(TINY_MED_CONFIG, vision=TINY_VISION) == TINY_BLIP
    text = ir.ImageRewardArchitecture().text_config()
    assert (text.encoder_hidden_size, text.vocab_size, text.num_hidden_layers, text.layer_norm_eps) == (1024, 30524, 12, 1e-12)
    with pytest.raises(ValueError, match="add_cross_attention is not true"):
        ir.ImageRewardArchitecture.from_med_config({**MED_CONFIG, "add_cross_attention": False})
    with pytest.raises(ValueError, match="missing num_hidden_layers; hidden_act 'relu'"):
        ir.ImageRewardArchitecture.from_med_config({**{k: v for k, v in MED_CONFIG.items() if k != "num_hidden_layers"},
                                                    "hidden_act": "relu"})


def test_imagereward_score_is_standardised_mlp_of_cls(ir_scorer):
    images = _images(3, 224, 224, seed=5)
    prompts = PROMPTS[:3]
    model = ir_scorer.model
    input_ids, attention_mask = ir_scorer.tokenize(prompts)
    with torch.no_grad():
        image_tokens = model.vision(pixel_values=(images - MEAN) / STD).last_hidden_state
        cls = model.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
                         encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long)
                         ).last_hidden_state[:, 0]
        raw = model.mlp(cls).squeeze(-1)
    scores = ir_scorer.score(prompts, images)
    torch.testing.assert_close(scores, (raw - 0.16717362830052426) / 1.0333394966054072, rtol=1e-5, atol=1e-5)
    assert scores.std() > 1e-2


def test_imagereward_preprocessing_is_resize_and_centre_crop_on_8_bit_pil():
    images = _images(2, 32, 64, seed=7)
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(hps.OPENAI_MEAN, hps.OPENAI_STD)])
    expected = torch.stack([reference(Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()))
                            for img in images])
    torch.testing.assert_close(ir.imagereward_preprocess(images), expected)


def test_imagereward_truncates_prompts_at_35_tokens(ir_scorer):
    long_prompt = " ".join(WORDS * 3)  # 60 words
    ids, mask = ir_scorer.tokenize([long_prompt, "a cat"])
    assert ids.shape == mask.shape == (2, 35)
    cls_id, sep_id = ir_scorer.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    assert ids[0, 0] == cls_id and ids[0, -1] == sep_id and mask[0].all()
    assert ids[1, :4].tolist() == [cls_id, *ir_scorer.tokenizer.convert_tokens_to_ids(["a", "cat"]), sep_id]
    assert mask[1].sum() == 4 and torch.all(ids[1, 4:] == 0)
    # Words after the 33rd token do not change the reward.
    images = _images(2, 224, 224, seed=9)
    torch.testing.assert_close(ir_scorer.score([long_prompt] * 2, images),
                               ir_scorer.score([long_prompt + " a red car"] * 2, images))
    assert not torch.allclose(ir_scorer.score(["a cat"] * 2, images), ir_scorer.score(["a dog"] * 2, images))


def test_imagereward_batches_equal_single_images(ir_scorer):
    images = _images(5, 48, 40, seed=11)
    batched = ir_scorer.score(PROMPTS, images)
    singles = torch.cat([ir_scorer.score([p], images[i:i + 1]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


# --- weights ----------------------------------------------------------------------------------------------------

@pytest.fixture()
def no_weights_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


@pytest.mark.parametrize("version, filename", [("v2.1", "HPS_v2.1_compressed.pt"), ("v2.0", "HPS_v2_compressed.pt")])
def test_hps_missing_weights_message(no_weights_anywhere, version, filename):
    with pytest.raises(MissingWeightsError) as err:
        hps.HPSScorer(version=version)
    for part in (repr(filename), "'xswu/HPSv2'", "--weights hps=DIR", f"{WEIGHTS_ENV}=DIR"):
        assert part in str(err.value), part
    with pytest.raises(ValueError, match="unknown HPS version 'v3'"):
        hps.HPSScorer(version="v3")


def test_imagereward_missing_weights_messages(no_weights_anywhere):
    with pytest.raises(MissingWeightsError) as err:
        ir.ImageRewardScorer()
    for part in ("'ImageReward.pt'", "'THUDM/ImageReward'", "--weights imagereward=DIR", f"{WEIGHTS_ENV}=DIR"):
        assert part in str(err.value), part
    folder = no_weights_anywhere / "ir"
    folder.mkdir()
    (folder / "ImageReward.pt").write_bytes(b"never read: the config and vocabulary are resolved first")
    with pytest.raises(MissingWeightsError) as err:
        ir.ImageRewardScorer(weights=folder)
    for part in ("'med_config.json'", "'THUDM/ImageReward'", "huggingface-cli download THUDM/ImageReward med_config.json",
                 "--weights imagereward=DIR", f"{WEIGHTS_ENV}=DIR"):
        assert part in str(err.value), part
    (folder / "med_config.json").write_text(json.dumps(MED_CONFIG))
    with pytest.raises(MissingWeightsError) as err:
        ir.ImageRewardScorer(weights=folder)
    for part in ("'vocab.txt'", "'bert-base-uncased'", "huggingface-cli download bert-base-uncased vocab.txt",
                 "--weights imagereward=DIR", f"{WEIGHTS_ENV}=DIR"):
        assert part in str(err.value), part


def test_weight_specs_list_the_expected_files():
    assert [s.filename for s in hps.HPSScorer.weight_specs()] == ["HPS_v2.1_compressed.pt"]
    assert [s.filename for s in hps.HPSScorer.weight_specs("v2.0")] == ["HPS_v2_compressed.pt"]
    assert [(s.repo, s.filename) for s in ir.ImageRewardScorer.weight_specs()] == [
        ("THUDM/ImageReward", "ImageReward.pt"), ("THUDM/ImageReward", "med_config.json"), ("bert-base-uncased", "vocab.txt")]
    assert {s.scorer for s in hps.HPSScorer.weight_specs() + ir.ImageRewardScorer.weight_specs()} == {"hps", "imagereward"}


def test_imagereward_key_map_fails_loudly(ir_scorer):
    checkpoint = ir.official_state_dict(ir_scorer.model)
    assert "blip.visual_encoder.blocks.1.attn.qkv.weight" in checkpoint and "mlp.layers.7.bias" in checkpoint
    assert "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight" in checkpoint
    model = ir.ImageRewardModel(TINY_BLIP)
    with pytest.raises(ir.ImageRewardKeyError, match=r"missing keys: none; unexpected keys: blip\.extra\.weight"):
        ir.load_imagereward_weights(model, {**checkpoint, "blip.extra.weight": torch.zeros(1)})
    with pytest.raises(ir.ImageRewardKeyError, match=r"unexpected keys: blip\.text_encoder\.pooler\.dense\.weight"):
        ir.load_imagereward_weights(model, {**checkpoint, "blip.text_encoder.pooler.dense.weight": torch.zeros(1)})
    partial = {k: v for k, v in checkpoint.items() if k != "blip.visual_encoder.norm.weight"}
    with pytest.raises(ir.ImageRewardKeyError, match=r"missing keys: blip\.visual_encoder\.norm\.weight; unexpected"):
        ir.load_imagereward_weights(model, partial)
    wrong_shape = {**checkpoint, "mlp.layers.7.bias": torch.zeros(2)}
    with pytest.raises(ir.ImageRewardKeyError, match="size mismatch"):
        ir.load_imagereward_weights(model, wrong_shape)
    # The unused parts of the real checkpoint are accepted and dropped; the rest round-trips exactly.
    extras = {"blip.text_encoder.embeddings.position_ids": torch.arange(64)[None], "blip.vision_proj.weight":
              torch.zeros(256, 32), "blip.vision_proj.bias": torch.zeros(256), "blip.text_proj.weight": torch.zeros(256, 32)}
    ir.load_imagereward_weights(model, {**checkpoint, **extras})
    model.eval()
    pixels = ir.imagereward_preprocess(_images(2, 224, 224))
    input_ids, attention_mask = ir_scorer.tokenize(PROMPTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(model(pixels, input_ids, attention_mask),
                                   ir_scorer.model(pixels, input_ids, attention_mask))


def test_hps_state_dict_must_match_exactly(hps_scorer):
    state = hps_scorer.model.state_dict()
    model = hps.build_hps_clip(TINY_CLIP)
    with pytest.raises(ValueError, match=r"(?s)ckpt.pt is not an HPS v2 .*Unexpected key\(s\) in state_dict: \"extra\""):
        hps.load_hps_weights(model, {**state, "extra": torch.zeros(1)}, "ckpt.pt")
    with pytest.raises(ValueError, match=r"Missing key\(s\) in state_dict: \"visual.ln_post.weight\""):
        hps.load_hps_weights(model, {k: v for k, v in state.items() if k != "visual.ln_post.weight"}, "ckpt.pt")


def test_real_constructors_load_checkpoints_saved_as_the_authors_did(tmp_path, monkeypatch, bert_vocab, hps_scorer,
                                                                      ir_scorer):
    """HPS's save_ckpt writes {iterations, name, state_dict (fp16 in the released files), optimizer, scaler};
    ImageReward saves `model.state_dict()`. Both load with torch.load(weights_only=True) (no --allow-pickle)."""
    monkeypatch.setattr(hps, "hps_model_config", lambda: TINY_CLIP)
    monkeypatch.setattr(ir, "BLIP_VIT_LARGE", TINY_VISION)
    state = hps_scorer.model.state_dict()
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    folder = tmp_path / "hps"
    folder.mkdir()
    torch.save({"iterations": 4000, "name": "hps", "state_dict": {k: v.half() for k, v in state.items()},
                "optimizer": optimizer.state_dict(), "scaler": {"scale": 65536.0, "_growth_tracker": 0}},
               folder / "HPS_v2.1_compressed.pt")
    assert set(load_state_dict(folder / "HPS_v2.1_compressed.pt")) == set(state)
    loaded = hps.HPSScorer(weights=folder, batch_size=4)  # directory holding the file
    described = loaded.describe()
    assert described["version"] == "v2.1" and described["scale"] == hps.HPSScorer.scale
    assert [(w["file"], w["repo"], w["path"]) for w in described["weights"]] == [
        ("HPS_v2.1_compressed.pt", "xswu/HPSv2", str(folder / "HPS_v2.1_compressed.pt"))]
    images = _images(2, 224, 224)
    torch.testing.assert_close(loaded.score(PROMPTS[:2], images), hps_scorer.score(PROMPTS[:2], images),
                               rtol=0, atol=0.5)  # fp16 weights
    folder = tmp_path / "ir"
    folder.mkdir()
    torch.save(ir.official_state_dict(ir_scorer.model), folder / "ImageReward.pt")
    (folder / "vocab.txt").write_bytes(bert_vocab.read_bytes())
    (folder / "med_config.json").write_text(json.dumps(TINY_MED_CONFIG))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nothing-here"))
    loaded = ir.ImageRewardScorer(weights=folder / "ImageReward.pt")  # file; med_config.json, vocab.txt next to it
    assert loaded.model.arch == TINY_BLIP
    assert [w["file"] for w in loaded.describe()["weights"]] == ["ImageReward.pt", "med_config.json", "vocab.txt"]
    torch.testing.assert_close(loaded.score(PROMPTS[:2], images), ir_scorer.score(PROMPTS[:2], images))
