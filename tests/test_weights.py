"""Weight resolution order, the missing-weight message, hashing and safe loading."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from metrics.base import MissingWeightsError
from metrics.weights import WEIGHTS_ENV, UnsafeWeightsError, WeightSpec, load_state_dict, resolve, sha256_file

SPEC = WeightSpec("hps", "xswu/HPSv2", "HPS_v2.1_compressed.pt")


def test_resolution_order(tmp_path, monkeypatch):
    explicit = tmp_path / "mine" / "HPS_v2.1_compressed.pt"
    explicit.parent.mkdir()
    explicit.write_bytes(b"a")
    env = tmp_path / "env"
    (env / "hps").mkdir(parents=True)
    (env / "hps" / "HPS_v2.1_compressed.pt").write_bytes(b"b")
    (env / "HPS_v2.1_compressed.pt").write_bytes(b"c")
    monkeypatch.setenv(WEIGHTS_ENV, str(env))
    assert resolve(SPEC, explicit) == explicit  # 1. explicit file
    assert resolve(SPEC, explicit.parent) == explicit  # 1. explicit directory holding the file
    assert resolve(SPEC) == env / "hps" / "HPS_v2.1_compressed.pt"  # 2. $BENCH_WEIGHTS_DIR/<scorer>/<file>
    (env / "hps" / "HPS_v2.1_compressed.pt").unlink()
    assert resolve(SPEC) == env / "HPS_v2.1_compressed.pt"  # 2. $BENCH_WEIGHTS_DIR/<file>


def test_missing_weights_message_names_file_repo_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        resolve(SPEC)
    message = str(err.value)
    for part in ("'HPS_v2.1_compressed.pt'", "'xswu/HPSv2'", "--weights hps=DIR", f"{WEIGHTS_ENV}=DIR",
                 "huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt"):
        assert part in message, part
    with pytest.raises(MissingWeightsError, match="looked in .*nope"):
        resolve(SPEC, tmp_path / "nope")


def test_an_explicit_path_is_the_only_place_looked_in(tmp_path, monkeypatch):
    (tmp_path / "hps").mkdir()
    (tmp_path / "hps" / "HPS_v2.1_compressed.pt").write_bytes(b"b")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert resolve(SPEC) == tmp_path / "hps" / "HPS_v2.1_compressed.pt"
    with pytest.raises(MissingWeightsError, match="looked in .*typo"):  # not the $BENCH_WEIGHTS_DIR copy
        resolve(SPEC, tmp_path / "typo" / "HPS_v2.1_compressed.pt")


def test_model_directories_are_looked_for_under_the_scorers_name(tmp_path, monkeypatch):
    spec = WeightSpec("pickscore", "yuvalkirstain/PickScore_v1", None)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        resolve(spec)
    assert f"use DIR = ROOT/pickscore and set {WEIGHTS_ENV}=ROOT" in str(err.value)
    (tmp_path / "pickscore").mkdir()  # following that advice finds it
    assert resolve(spec) == tmp_path / "pickscore"


def test_hash_and_safe_loading(tmp_path):
    tensors = {"w": torch.arange(6.0).view(2, 3)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_state_dict(tmp_path / "w.safetensors")["w"], tensors["w"])
    torch.save({"state_dict": tensors}, tmp_path / "w.pt")
    assert torch.equal(load_state_dict(tmp_path / "w.pt")["w"], tensors["w"])
    assert sha256_file(tmp_path / "w.pt") == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    torch.save({"state_dict": tensors, "object": _Custom()}, tmp_path / "pickled.pt")
    with pytest.raises(UnsafeWeightsError, match="--allow-pickle"):
        load_state_dict(tmp_path / "pickled.pt")
    assert torch.equal(load_state_dict(tmp_path / "pickled.pt", allow_pickle=True)["w"], tensors["w"])


class _Custom:
    pass


def test_toy_scorer_resolution_order(tmp_path, monkeypatch):
    from bench.toy.paths import SHIPPED_TOY_DIR, TOY_DIR_ENV
    from metrics.toy_clip import ToyClipScorer

    spec = ToyClipScorer.weight_specs()[0]
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(TOY_DIR_ENV, raising=False)
    assert ToyClipScorer.locate_weights(spec) == SHIPPED_TOY_DIR / "scorers" / "toy-clip.safetensors"  # 4. shipped
    (tmp_path / "toy" / "scorers").mkdir(parents=True)
    (tmp_path / "toy" / "scorers" / "toy-clip.safetensors").write_bytes(b"t")
    monkeypatch.setenv(TOY_DIR_ENV, str(tmp_path / "toy"))
    assert ToyClipScorer.locate_weights(spec) == tmp_path / "toy" / "scorers" / "toy-clip.safetensors"  # 3.
    (tmp_path / "w" / "toy-clip").mkdir(parents=True)
    (tmp_path / "w" / "toy-clip" / "toy-clip.safetensors").write_bytes(b"w")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "w"))
    assert ToyClipScorer.locate_weights(spec) == tmp_path / "w" / "toy-clip" / "toy-clip.safetensors"  # 2.
    assert ToyClipScorer.locate_weights(spec, tmp_path / "toy" / "scorers") == tmp_path / "toy" / "scorers" / spec.filename
    with pytest.raises(MissingWeightsError, match="bench toy build-scorers --out DIR"):
        ToyClipScorer.locate_weights(spec, tmp_path / "nowhere.safetensors")  # 1. explicit: nothing else is tried
