"""Named prompt sets read from tiny files in each real source's layout, from the hub cache, or fail clearly."""

from __future__ import annotations

import json

import datasets
import huggingface_hub
import pytest

from bench.core.registry import UnknownNameError
from bench.harness.data import DataError
from bench.harness.prompt_sets import HPSV2_STYLES, PROMPT_SETS, load_prompt_set
from bench.results.protocols import hpsv2_benchmark

# Rows as they appear in google-research/parti's PartiPrompts.tsv: bare numbers, inner quotes, a trailing
# space, an empty Note.
PARTI_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "42\tAbstract\tBasic\tSimple numbers but challenging\n"
    "0\tAbstract\tBasic\tSimple numbers but challenging\n"
    "a shiba inu\tAnimals\tBasic\t\n"
    'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the wall.'
    "\tOutdoor Scenes\tComplex\t\n"
    '"Hello World" written on a whiteboard\tIllustrations\tWriting & Symbols\t\n'
    "flying over the city of Mars. \tWorld Knowledge\tComplex\t\n"
)
PARTI_PROMPTS = ["42", "0", "a shiba inu",
                 'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the wall.',
                 '"Hello World" written on a whiteboard', "flying over the city of Mars. "]
# DrawBench.py (shunk031/huggingface-datasets_DrawBench): the ClassLabel names, in order
DRAWBENCH_CATEGORIES = ["Colors", "Conflicting", "Counting", "DALL-E", "Descriptions", "Gary Marcus et al.",
                        "Misspellings", "Positional", "Rare Words", "Reddit", "Text"]


def _pickapic_parquet(path, captions):
    """A Pick-a-Pic v2 shard: one comparison per row, images as encoded bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(captions)
    datasets.Dataset.from_dict({
        "are_different": [True] * n, "best_image_uid": ["u0"] * n, "caption": captions,
        "has_label": [True] * n, "image_0_uid": ["u0"] * n, "image_1_uid": ["u1"] * n,
        "jpg_0": [b"\xff\xd8jpeg"] * n, "jpg_1": [b"\xff\xd8jpeg"] * n,
        "label_0": [1.0] * n, "label_1": [0.0] * n, "model_0": ["sdxl"] * n, "model_1": ["sd2.1"] * n,
        "ranking_id": list(range(n)), "user_id": [7] * n, "num_example_per_prompt": [1] * n,
    }).to_parquet(str(path))


def test_registered_names_and_did_you_mean():
    assert PROMPT_SETS.names() == ["drawbench", "hpdv2", "parti", "pickapic-test"]
    with pytest.raises(UnknownNameError, match="did you mean 'parti'"):
        load_prompt_set("partii")


def test_pickapic_test_reads_the_test_unique_shard_and_drops_duplicates(tmp_path):
    # the hub layout: data/<split>-00000-of-00001-<hash>.parquet, one file per split
    _pickapic_parquet(tmp_path / "data" / "test_unique-00000-of-00001-ecef20a3469ae6e6.parquet",
                      ["a red cube", "a corgi", "a red cube", "42"])
    _pickapic_parquet(tmp_path / "data" / "train-00000-of-00001-abc.parquet", ["a training caption"])
    prompt_set = load_prompt_set("pickapic-test", path=tmp_path)
    assert prompt_set.prompts == ["a red cube", "a corgi", "42"]
    assert prompt_set.styles is None and prompt_set.split == "test_unique" and prompt_set.count == 3
    assert prompt_set.describe() == {"name": "pickapic-test", "source": str(tmp_path), "split": "test_unique",
                                     "count": 3}
    # the parquet file itself works too
    shard = next((tmp_path / "data").glob("test_unique-*.parquet"))
    assert load_prompt_set("pickapic-test", path=shard).prompts == ["a red cube", "a corgi", "42"]


def test_parti_keeps_the_tsv_text_verbatim_with_categories(tmp_path):
    (tmp_path / "PartiPrompts.tsv").write_text(PARTI_TSV, encoding="utf-8")
    prompt_set = load_prompt_set("parti", path=tmp_path)
    assert prompt_set.prompts == PARTI_PROMPTS
    assert prompt_set.styles == ["Abstract", "Abstract", "Animals", "Outdoor Scenes", "Illustrations", "World Knowledge"]
    assert prompt_set.split == "train" and prompt_set.count == 6


def test_hpdv2_keeps_styles_in_order_and_feeds_the_hpsv2_benchmark(tmp_path):
    # zhwang/HPDv2: benchmark/<style>.json, each a plain JSON list of prompts; other files are ignored
    bench_dir = tmp_path / "benchmark"
    bench_dir.mkdir()
    for style in HPSV2_STYLES:
        (bench_dir / f"{style}.json").write_text(json.dumps([f"{style} prompt {i}" for i in range(10)]))
    (bench_dir / "drawbench.json").write_text(json.dumps(["not an HPS v2 style"]))
    (tmp_path / "test.json").write_text(json.dumps([{"prompt": "HPD test pair"}]))
    prompt_set = load_prompt_set("hpdv2", path=tmp_path)
    assert prompt_set.count == 40 and prompt_set.split == "benchmark"
    assert prompt_set.prompts[:2] == ["anime prompt 0", "anime prompt 1"] and prompt_set.prompts[-1] == "photo prompt 9"
    assert prompt_set.styles == [s for s in HPSV2_STYLES for _ in range(10)]
    # one image per prompt: cos 0.25 everywhere except photo at 0.30 -> 25, 25, 25, 30; Averaged 26.25
    cosines = [0.30 if style == "photo" else 0.25 for style in prompt_set.styles]
    table = hpsv2_benchmark(prompt_set.by_style(cosines))
    assert list(table["styles"]) == list(HPSV2_STYLES)
    assert table["styles"]["photo"]["mean"] == pytest.approx(30.0) and table["averaged"] == pytest.approx(26.25)
    # the hpsv2 package's own copy (~/.cache/hpsv2/datasets/benchmark) has the files at the top level
    assert load_prompt_set("hpdv2", path=bench_dir).prompts == prompt_set.prompts
    (bench_dir / "photo.json").unlink()
    with pytest.raises(DataError, match="no photo.json under"):
        load_prompt_set("hpdv2", path=bench_dir)
    with pytest.raises(DataError, match="is not a directory"):
        load_prompt_set("hpdv2", path=bench_dir / "anime.json")


def test_drawbench_from_the_parquet_export_and_from_the_sheet_csv(tmp_path):
    # the hub's parquet export of shunk031/DrawBench: default/test/0000.parquet, category a ClassLabel
    features = datasets.Features({"prompts": datasets.Value("string"),
                                  "category": datasets.ClassLabel(names=DRAWBENCH_CATEGORIES)})
    export = tmp_path / "export" / "default" / "test" / "0000.parquet"
    export.parent.mkdir(parents=True)
    datasets.Dataset.from_dict({"prompts": ["A red colored car.", "A storefront with 'Text to Image' written on it."],
                                "category": [0, 10]}, features=features).to_parquet(str(export))
    from_export = load_prompt_set("drawbench", path=tmp_path / "export")
    assert from_export.prompts == ["A red colored car.", "A storefront with 'Text to Image' written on it."]
    assert from_export.styles == ["Colors", "Text"] and from_export.split == "test"
    # the CSV export of the authors' sheet: capitalised headers, quoted fields with commas
    sheet = tmp_path / "drawbench.csv"
    sheet.write_text('Prompts,Category\nA red colored car.,Colors\n"A black apple and a green backpack, '
                     'on a table.",Colors\n', encoding="utf-8")
    from_sheet = load_prompt_set("drawbench", path=sheet)
    assert from_sheet.prompts == ["A red colored car.", "A black apple and a green backpack, on a table."]
    assert from_sheet.styles == ["Colors", "Colors"]


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An offline, initially empty Hugging Face cache."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_snapshot(cache, repo, revision="main", commit="0123456789abcdef0123456789abcdef01234567"):
    """The cache layout `hf download` leaves: refs/<revision> -> commit, snapshots/<commit>/<files>."""
    repo_dir = cache / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_sets_are_read_from_the_hub_cache_without_a_path(hub_cache):
    _cache_snapshot(hub_cache, "nateraw/parti-prompts").joinpath("PartiPrompts.tsv").write_text(PARTI_TSV)
    parti = load_prompt_set("parti")
    assert parti.prompts == PARTI_PROMPTS
    assert parti.source == "hf://datasets/nateraw/parti-prompts@0123456789abcdef0123456789abcdef01234567"
    # DrawBench lives on the parquet-export revision, cached under refs/refs/convert/parquet
    export = _cache_snapshot(hub_cache, "shunk031/DrawBench", revision="refs/convert/parquet") / "default" / "test"
    export.mkdir(parents=True)
    datasets.Dataset.from_dict({"prompts": ["A blue bird."], "category": ["Colors"]}).to_parquet(str(export / "0000.parquet"))
    assert load_prompt_set("drawbench").prompts == ["A blue bird."]


@pytest.mark.parametrize("name, repo", [("pickapic-test", "yuvalkirstain/pickapic_v2"),
                                        ("parti", "nateraw/parti-prompts"),
                                        ("hpdv2", "zhwang/HPDv2"),
                                        ("drawbench", "shunk031/DrawBench")])
def test_a_missing_set_names_where_to_get_it(hub_cache, name, repo):
    with pytest.raises(DataError) as raised:
        load_prompt_set(name)
    message = str(raised.value)
    assert f"prompt set {name!r}" in message and "not in the Hugging Face cache" in message
    assert f"https://huggingface.co/datasets/{repo}" in message
    assert f"hf download {repo} --repo-type dataset" in message
    assert f"load_prompt_set({name!r}, path=...)" in message and f"--prompts {name}=PATH" in message


def test_missing_files_and_columns_fail_clearly(tmp_path, hub_cache):
    with pytest.raises(DataError, match="does not exist.*PartiPrompts.tsv"):
        load_prompt_set("parti", path=tmp_path / "nowhere")
    with pytest.raises(DataError, match="--revision refs/convert/parquet"):
        load_prompt_set("drawbench")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data/test_unique-\\*.parquet under"):
        load_prompt_set("pickapic-test", path=tmp_path / "empty")
    wrong = tmp_path / "prompts.parquet"
    datasets.Dataset.from_dict({"prompt": ["a cat"]}).to_parquet(str(wrong))
    with pytest.raises(DataError, match="no column 'caption'"):
        load_prompt_set("pickapic-test", path=wrong)


def test_run_prompts_accept_a_set_name_and_record_where_they_came_from(tmp_path):
    from bench.harness.prompts import resolve_prompts

    (tmp_path / "PartiPrompts.tsv").write_text(PARTI_TSV, encoding="utf-8")
    prompts, provenance = resolve_prompts(f"parti={tmp_path}")
    assert prompts == PARTI_PROMPTS
    assert provenance == {"name": "parti", "source": str(tmp_path), "split": "train", "count": 6}
    text = tmp_path / "mine.txt"
    text.write_text("a red circle\n\na blue square\n")
    assert resolve_prompts(text) == (["a red circle", "a blue square"], {"file": str(text), "count": 2})
    with pytest.raises(DataError, match=r"prompt file partii does not exist \(nor is 'partii' a prompt set: drawbench, "):
        resolve_prompts("partii")
