"""A tokenizer jtlens saved (one `tokenizer.json`), read with the `tokenizers` package alone.

Every cached model (a converted GGUF file, ...) keeps its tokenizer as a plain `tokenizer.json`.
transformers' `PreTrainedTokenizerFast` for it costs an import of transformers (measured 0.6-0.8
s, several times the load itself) on every `from_pretrained` and every `jtlens run`.
`SavedTokenizer` answers what jtlens calls on each run - encoding without special tokens,
decoding without clean-up, the special tokens and their ids, the vocabulary, `padding_side` -
from the `tokenizers` object. Anything else (`__call__`, `apply_chat_template`, setting
`pad_token`, ...) builds the transformers tokenizer from the same folder, and from then on every
answer comes from it, so `model.tokenizer` does all a `PreTrainedTokenizerFast` does.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
_OWN = ("_folder", "_backend", "_tokens", "_hf", "padding_side")


def _content(token):
    """A special token as tokenizer_config.json holds it (a string or an AddedToken dict)."""
    return token.get("content") if isinstance(token, dict) else token


class SavedTokenizer:
    """A saved fast tokenizer: `tokenizers` for jtlens's own calls, transformers for the rest."""

    def __init__(self, folder):
        from tokenizers import Tokenizer

        folder = Path(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        self._folder = folder
        self._backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokens = {name: _content(config.get(name)) for name in SPECIAL_TOKENS}
        self._hf = None
        self.padding_side = config.get("padding_side", "right")

    # ------------------------------------------------------------------ the calls jtlens makes
    def encode(self, text, add_special_tokens: bool = True, **kwargs) -> list:
        """text -> token ids [pos] (as `PreTrainedTokenizerFast.encode`)."""
        if self._hf is None and isinstance(text, str) and not add_special_tokens and not kwargs:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._transformers().encode(text, add_special_tokens=add_special_tokens, **kwargs)

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
               **kwargs) -> str:
        """token ids [pos] -> text (as `PreTrainedTokenizerFast.decode`)."""
        if self._hf is None and clean_up_tokenization_spaces is False and not kwargs:
            ids = [ids] if isinstance(ids, int) else list(ids)
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._transformers().decode(ids, skip_special_tokens=skip_special_tokens,
                                           clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                                           **kwargs)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces=None, **kwargs) -> list:
        """token ids [batch, pos] -> one text per row (as `PreTrainedTokenizerFast.batch_decode`)."""
        if self._hf is None and clean_up_tokenization_spaces is False and not kwargs:
            return self._backend.decode_batch([list(s) for s in sequences],
                                              skip_special_tokens=skip_special_tokens)
        return self._transformers().batch_decode(
            sequences, skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    def get_vocab(self) -> dict:
        """token -> id, added tokens included."""
        if self._hf is None:
            return self._backend.get_vocab(with_added_tokens=True)
        return self._hf.get_vocab()

    def __len__(self) -> int:
        if self._hf is None:
            return self._backend.get_vocab_size(with_added_tokens=True)
        return len(self._hf)

    def _special(self, name: str):
        if self._hf is not None:
            return getattr(self._hf, name)
        if name.endswith("_id"):
            token = self._tokens[name[:-3]]
            return None if token is None else self._backend.token_to_id(token)
        return self._tokens[name]

    bos_token = property(lambda self: self._special("bos_token"))
    eos_token = property(lambda self: self._special("eos_token"))
    pad_token = property(lambda self: self._special("pad_token"))
    unk_token = property(lambda self: self._special("unk_token"))
    bos_token_id = property(lambda self: self._special("bos_token_id"))
    eos_token_id = property(lambda self: self._special("eos_token_id"))
    pad_token_id = property(lambda self: self._special("pad_token_id"))
    unk_token_id = property(lambda self: self._special("unk_token_id"))

    # ------------------------------------------------------------------ everything else
    def _transformers(self):
        """The transformers tokenizer of the same folder, built once."""
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            hf = PreTrainedTokenizerFast.from_pretrained(str(self._folder))
            hf.padding_side = self.padding_side
            object.__setattr__(self, "_hf", hf)
        return self._hf

    def __getattr__(self, name):
        if name.startswith("__") or name in _OWN:  # copy/pickle probes, and set-up not done yet
            raise AttributeError(name)
        return getattr(self._transformers(), name)

    def __setattr__(self, name, value):
        if name in _OWN:
            object.__setattr__(self, name, value)
            if name == "padding_side" and self._hf is not None:
                self._hf.padding_side = value
        else:  # e.g. pad_token: from now on transformers' tokenizer answers everything
            setattr(self._transformers(), name, value)

    def __call__(self, *args, **kwargs):
        return self._transformers()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"SavedTokenizer({str(self._folder)!r}, vocab={len(self)})"
