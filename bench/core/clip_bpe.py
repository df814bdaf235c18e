"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

open_clip carries `bpe_simple_vocab_16e6.txt.gz` (the OpenAI CLIP merges). transformers'
`CLIPTokenizer` wants `vocab.json` + `merges.txt`; we derive both the way open_clip's
`SimpleTokenizer` builds its encoder (open_clip/tokenizer.py): 256 byte symbols, the same symbols with
the end-of-word marker `</w>`, one token per merge (48,894 merges), then the two special tokens.
The ids match open_clip's exactly (49,408 tokens); only the padding id differs (HF pads with
`<|endoftext|>`, 49407). The files are written once to a cache directory, never committed.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

from transformers import CLIPTokenizer

from bench.core.cache import cache_dir

CLIP_VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2  # the line range open_clip keeps: merges[1 : 49152 - 256 - 2 + 1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _open_clip_bpe_path() -> Path:
    import open_clip.tokenizer  # here, not at the top: open_clip and torchvision take seconds to import

    return Path(open_clip.tokenizer.default_bpe())


def write_clip_bpe_files(out_dir: Path) -> Path:
    """Write `vocab.json` and `merges.txt` derived from open_clip's BPE file into out_dir."""
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".vocab.{os.getpid()}.json"
    tmp.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    tmp_merges = out_dir / f".merges.{os.getpid()}.txt"
    tmp_merges.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    os.replace(tmp_merges, out_dir / "merges.txt")
    os.replace(tmp, out_dir / "vocab.json")
    return out_dir


@functools.lru_cache(maxsize=1)
def clip_bpe_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The CLIP tokenizer (49,408 tokens) built from open_clip's vocabulary, cached on disk."""
    files = cache_dir() / "clip-bpe-tokenizer"
    if not (files / "vocab.json").exists() or not (files / "merges.txt").exists():
        write_clip_bpe_files(files)
    tokenizer = CLIPTokenizer(
        vocab=str(files / "vocab.json"),
        merges=str(files / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP tokenizer built from {files} has {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}")
    return tokenizer
