"""SavedTokenizer (a saved tokenizer.json read with `tokenizers` alone) answers exactly as
transformers' PreTrainedTokenizerFast of the same folder, and becomes it for everything else."""

import importlib.resources
import subprocess
import sys

import pytest

from jtlens.io.saved_tokenizer import SavedTokenizer

transformers = pytest.importorskip("transformers")

TINY = importlib.resources.files("jtlens") / "assets" / "jtlens-tiny"
TEXT = ("Return a new list containing all items from the iterable in ascending order.\n"
        "  Indented  text\twith tabs, ÜNICODE, 日本語, emoji 🙂, <|endoftext|> inside,\r\n"
        "numbers 3.14159 and 1,000,000; code: def f(x): return x ** 2\n\n\n   end")


def check_like_transformers(folder, text: str) -> None:
    """Every answer SavedTokenizer gives itself equals PreTrainedTokenizerFast's on `text`."""
    ours = SavedTokenizer(folder)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    lines = [text, *text.splitlines(keepends=True)]
    for line in lines:
        assert ours.encode(line, add_special_tokens=False) == theirs.encode(line, add_special_tokens=False), repr(line)
    rows = [theirs.encode(line, add_special_tokens=False) for line in lines]
    for row in rows:
        for skip in (False, True):
            assert ours.decode(row, skip_special_tokens=skip, clean_up_tokenization_spaces=False) == \
                theirs.decode(row, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    singles = [[t] for t in rows[0]]
    assert ours.batch_decode(singles, clean_up_tokenization_spaces=False) == \
        theirs.batch_decode(singles, clean_up_tokenization_spaces=False)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(ours, name + "_id") == getattr(theirs, name + "_id"), name
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == len(theirs)
    assert ours.padding_side == theirs.padding_side
    assert ours._hf is None, "the answers above came from transformers, not from tokenizers"


def test_saved_tokenizer_answers_as_transformers_does():
    check_like_transformers(TINY, TEXT)


def test_the_rest_comes_from_transformers_and_stays_consistent():
    ours = SavedTokenizer(TINY)
    ours.padding_side = "left"
    batch = ours(["a b c", "a"], padding=True)            # __call__ builds transformers' tokenizer
    assert ours._hf is not None and ours._hf.padding_side == "left"
    assert batch["attention_mask"][1][0] == 0             # padded on the left, as asked before
    assert ours.decode([10, 11]) == ours._hf.decode([10, 11])
    ours.pad_token = "<|pad|>"                            # an edit transformers owns from now on
    assert ours.pad_token == "<|pad|>" and ours.pad_token_id == ours._hf.pad_token_id
    assert ours.vocab_size == ours._hf.vocab_size and "SavedTokenizer" in repr(ours)


def test_loading_a_cached_model_does_not_import_transformers():
    code = ("import sys, jtlens; m = jtlens.HookedTransformer.from_pretrained('jtlens-tiny'); "
            "m.to_str_tokens('hello world'); m.to_string(m.to_tokens('hi')); "
            "print('transformers' in sys.modules, type(m.tokenizer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "SavedTokenizer"], out.stdout + out.stderr
