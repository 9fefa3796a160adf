"""Word-level tokenizers for tiny and built-in worlds, wrapped in ``PreTrainedTokenizerFast``.

Real models use their own tokenizers (CLIP BPE, T5 sentencepiece) loaded from disk. Tests and the shapes world need
tokenizers that can be *built* offline: a ``tokenizers`` WordLevel model with ``<bos>``/``<eos>`` added around every
prompt. ``transformers.CLIPTokenizer.from_pretrained`` on a missing directory can silently give a useless tokenizer
offline, so :func:`load_tokenizer` checks what it loaded and fails loudly.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build_word_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A lowercase word-level tokenizer over ``words`` that pads to ``max_length`` (ids 0-3 are special)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in sorted(set(w.lower() for w in words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
        padding_side="right",
        do_lower_case=True,
    )


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved with ``save_pretrained``; raise if the directory holds none."""
    path = Path(path)
    files = {"tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json"}
    if path.exists() and not any((path / f).exists() for f in files):
        raise FileNotFoundError(f"{path}: no tokenizer files ({', '.join(sorted(files))}); expected a directory "
                                "written by tokenizer.save_pretrained()")
    tok = AutoTokenizer.from_pretrained(str(path))
    if len(tok) < 4 or tok.eos_token_id is None:
        raise ValueError(f"{path}: loaded a tokenizer with {len(tok)} tokens and eos {tok.eos_token_id}; "
                         "the files are incomplete or not a tokenizer")
    return tok
