"""Tokenization with TransformerLens's conventions (BOS prepending, padding side, truncation)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from jtlens.core.config import Config


def _require(tokenizer):
    if tokenizer is None:
        raise ValueError("this model has no tokenizer: pass token ids, or build the model with "
                         "tokenizer=... (from_pretrained loads one)")
    return tokenizer


def bos_id(tokenizer) -> int:
    for tok_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return tok_id
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to prepend; "
                     "call with prepend_bos=False")


def pad_id(tokenizer) -> int:
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tok_id is not None:
            return tok_id
    return 0


def to_tokens(tokenizer, cfg: Config, text: Union[str, Sequence[str]], prepend_bos: bool = True,
              padding_side: str = "right", truncate: bool = True):
    """Strings -> (tokens [batch, pos] int32, attention_mask [batch, pos] or None).

    BOS is prepended as an id (not as text) unless the tokenizer adds it itself; batches are
    padded on `padding_side`; sequences longer than n_ctx are truncated when `truncate`, and kept
    whole otherwise (as TransformerLens; the forward then rejects them). The mask is returned only when padding was added.
    """
    tok = _require(tokenizer)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; use 'left' or 'right'")
    if not isinstance(text, str) and not (isinstance(text, (list, tuple))
                                          and all(isinstance(s, str) for s in text)):
        raise TypeError(f"to_tokens: text must be a string or a list of strings, got "
                        f"{type(text).__name__}{'' if text is None else ': ' + repr(text)[:60]}")
    strings = [text] if isinstance(text, str) else list(text)
    if not strings:
        raise ValueError("no text given: pass a non-empty string or list of strings")
    rows = []
    for s in strings:
        ids = list(tok.encode(s, add_special_tokens=False))
        if prepend_bos:
            ids = [bos_id(tok)] + ids
        if not ids:
            raise ValueError("the text is empty and prepend_bos=False, so there are no tokens")
        if truncate:
            ids = ids[: cfg.n_ctx]  # truncate=False keeps it all; the forward rejects it past n_ctx
        rows.append(ids)
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id(tok), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, ids in enumerate(rows):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        tokens[i, span] = ids
        mask[i, span] = 1
    return tokens, (None if mask.all() else mask)


def to_string(tokenizer, tokens) -> Union[str, list]:
    """One token id or 1-D tokens -> str; 2-D -> list of str (no clean-up of tokenization spaces)."""
    tok = _require(tokenizer)
    arr = np.asarray(tokens)
    if arr.ndim <= 1:
        return tok.decode(arr.reshape(-1).tolist(), clean_up_tokenization_spaces=False)
    return [to_string(tok, row) for row in arr]


def to_str_tokens(tokenizer, tokens) -> list:
    """Token ids [pos] (or [batch, pos]) -> one string per token (nested for a batch)."""
    tok = _require(tokenizer)
    arr = np.asarray(tokens)
    if arr.ndim == 2:
        return [to_str_tokens(tok, row) for row in arr]
    return tok.batch_decode(arr.reshape(-1, 1).tolist(), clean_up_tokenization_spaces=False)


def to_single_token(tokenizer, cfg: Config, string: str) -> int:
    tokens, _ = to_tokens(tokenizer, cfg, string, prepend_bos=False)
    if tokens.shape[1] != 1:
        raise ValueError(f"{string!r} is {tokens.shape[1]} tokens, not one: "
                         f"{to_str_tokens(tokenizer, tokens[0])!r}")
    return int(tokens[0, 0])


class TokenNotFoundError(ValueError, AssertionError):
    """get_token_position's token is absent (TransformerLens asserts: an AssertionError too)."""


def token_position(tokens_row, token_id: int, mode: str = "first") -> int:
    positions = np.nonzero(np.asarray(tokens_row) == token_id)[0]
    if len(positions) == 0:
        raise TokenNotFoundError("The token does not occur in the prompt")
    if mode not in ("first", "last"):
        raise ValueError(f"mode={mode!r}; use 'first' or 'last'")
    return int(positions[0] if mode == "first" else positions[-1])


def maybe_strings(x) -> Optional[Union[str, list]]:
    """The input as str / list[str] if it is text, else None."""
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x):
        return list(x)
    return None
