"""Suite definitions apply cleanly to every registered method; prompt sets resolve or fail clearly."""

from __future__ import annotations

import datasets
import pytest

from bench.core.config import OverrideError, apply_overrides
from bench.harness.data import DataError
from bench.harness.prompts import PromptSource, load_prompts
from bench.harness.suites import SUITES, get_suite
from methods.alignment import METHODS


@pytest.mark.parametrize("name", SUITES.names())
def test_suite_overrides_fit_the_method_configs(name):
    suite = get_suite(name)
    assert suite.budget.limit > 0 and suite.metrics
    for method in METHODS.names():
        apply_overrides(METHODS.get(method).Config(), suite.method_args.get(method, {}))
        apply_overrides(suite.train, suite.train_args.get(method, {}))
    for label in set(suite.method_args) | set(suite.train_args):  # a method, or a tuned variant's label of one
        method = suite.variants.get(label, label)
        assert method in METHODS, label
        apply_overrides(METHODS.get(method).Config(), suite.method_args.get(label, {}))
        apply_overrides(suite.train, suite.train_args.get(label, {}))


def test_optional_fields_take_a_value_or_none_from_the_command_line():
    dspo = METHODS.get("dspo").Config()
    assert dspo.beta is None
    assert apply_overrides(dspo, {"beta": "0.01"}).beta == 0.01
    assert apply_overrides(apply_overrides(dspo, {"beta": "2"}), {"beta": "None"}).beta is None
    with pytest.raises(OverrideError, match="beta: expected float, got 'high'"):
        apply_overrides(dspo, {"beta": "high"})
    with pytest.raises(OverrideError, match="beta must be > 0"):
        apply_overrides(dspo, {"beta": "-1"})


def test_real_suites_follow_the_dpo_recipes():
    sd15, sdxl = get_suite("sd15-pickapic"), get_suite("sdxl-pickapic")
    assert sd15.budget.limit == sdxl.budget.limit == 2000 * 2048 * 8
    assert sd15.train.batch_size * sd15.train.grad_accum * 16 == 2048  # 16 processes
    assert sdxl.train.optimizer == "adafactor" and sdxl.train.gradient_checkpointing
    assert sdxl.method_args["dpo"]["beta"] == sdxl.method_args["inpo"]["beta"] == 5000.0
    assert isinstance(sd15.eval_prompts, PromptSource) and sd15.eval_prompts.split == "test_unique"


def test_prompts_from_text_file_and_list(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert load_prompts(path) == ["a cat", "a dog"]
    assert load_prompts(("x", "y")) == ["x", "y"]
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="empty"):
        load_prompts(())


def test_prompts_from_a_dataset_column(tmp_path):
    path = tmp_path / "test.parquet"
    datasets.Dataset.from_dict({"caption": ["b", "a", "b", "c"], "other": [1, 2, 3, 4]}).to_parquet(str(path))
    assert load_prompts(PromptSource(str(path))) == ["b", "a", "c"]
    assert load_prompts(PromptSource(str(path), unique=False, limit=3)) == ["b", "a", "b"]
    with pytest.raises(DataError, match="no column 'prompt'"):
        load_prompts(PromptSource(str(path), column="prompt"))
    with pytest.raises(DataError, match="cannot load evaluation prompts 'no-such-org/prompts'"):
        load_prompts(PromptSource("no-such-org/prompts"))
