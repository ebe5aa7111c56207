"""HookedEncoder: TransformerLens's BERT API over the same pure forward and Hooks.

A BERT model is a `Config` with `post_ln=True` (plus token types and an optional MLM head), so
capturing, patching, `jax.grad` and sweeps work exactly as on decoders. The facade adds what
TransformerLens's HookedEncoder adds: `token_type_ids`, `one_zero_attention_mask`, tokenizer
outputs as a triple, and the "predictions" / "embeddings" return types.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from jtlens.core import tokens as T
from jtlens.core.config import Config
from jtlens.tl.hooked_transformer import HookedTransformer, _forward_jit, _forward_with_cache_jit
from jtlens.core.hooks import Hooks
from jtlens.core.checks import check_attention_mask
from jtlens.io.loading import load_no_processing
from jtlens.core.weights import DEFAULT_PROCESSING
from jtlens.core.checks import check_tokens
from jtlens.core.engine import _check_encoder_inputs
from jtlens.core.forward import forward, forward_with_cache

RETURN_TYPES = ("logits", "embeddings", "predictions", None)


class HookedEncoder(HookedTransformer):
    """A BERT-style encoder with TransformerLens's HookedEncoder API.

    Args:
      cfg: a Config with `post_ln=True`. params: layer-stacked params (default random).
      tokenizer: a Hugging Face BERT tokenizer (needed for string inputs).
    """

    def __init__(self, cfg: Config, params: Optional[dict] = None, tokenizer: Any = None):
        if not cfg.post_ln:
            raise ValueError("HookedEncoder needs a BERT-style Config (post_ln=True); use "
                             "HookedTransformer for decoder models")
        super().__init__(cfg, params, tokenizer)

    @classmethod
    def from_pretrained(cls, model_name: str, dtype: str = "float32", **kwargs) -> "HookedEncoder":
        """Load a BERT / DistilBERT checkpoint without weight processing, as TransformerLens
        does (a local save_pretrained folder or a hub name, through `jtlens.loading`).
        A base-model checkpoint (`BertModel`) loads without the MLM head, and warns."""
        processing = [k for k in DEFAULT_PROCESSING if kwargs.pop(k, False)]
        if processing:
            raise ValueError(f"{processing}: TransformerLens processes no encoder weights (its "
                             f"LayerNorms come after the residual adds, so they cannot be folded)")
        cfg, params, tokenizer = load_no_processing(model_name, dtype=dtype, **kwargs)
        if not cfg.post_ln:
            kind, cls_name = (("encoder-decoder", "HookedEncoderDecoder") if cfg.cross_attention
                              else ("decoder", "HookedTransformer"))
            raise ValueError(f"{model_name} is a {cfg.original_architecture} {kind}; load it with "
                             f"{cls_name}.from_pretrained")
        if not cfg.mlm_head:
            warnings.warn(f"{model_name} is a {cfg.original_architecture} checkpoint without an "
                          f"MLM head: return_type='logits' is unavailable; use "
                          f"return_type='embeddings' for the encoder output", stacklevel=2)
        return cls(cfg, params, tokenizer)

    # ------------------------------------------------------------------ running
    def _run(self, input, hooks: Optional[Hooks], *, return_type: Optional[str] = "logits",
             token_type_ids=None, one_zero_attention_mask=None, eager: bool = False,
             capture: bool = False):
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type={return_type!r}; use one of {RETURN_TYPES}")
        text = T.maybe_strings(input)
        if text is not None:
            tokens, types, mask = self.to_tokens(text)
            token_type_ids = types if token_type_ids is None else token_type_ids
            one_zero_attention_mask = mask if one_zero_attention_mask is None else one_zero_attention_mask
        else:
            tokens = np.asarray(input)
            if tokens.ndim == 1:
                tokens = tokens[None]
        # Checked here, on concrete arrays: inside jit the values are tracers.
        check_tokens(tokens, self.cfg)
        types = None if token_type_ids is None else np.asarray(token_type_ids)
        embeddings = return_type == "embeddings"
        core_type = None if embeddings else "logits" if return_type == "predictions" else return_type
        stop = self.cfg.n_layers if embeddings else None
        _check_encoder_inputs(tokens, types, core_type, stop, self.cfg)
        mask = None if one_zero_attention_mask is None else jnp.asarray(one_zero_attention_mask)
        if mask is not None:
            check_attention_mask(mask, tokens.shape)
        if eager:
            run = functools.partial(forward_with_cache if capture else forward, scan=False)
        else:
            run = _forward_with_cache_jit if capture else _forward_jit
        out = run(self.params, jnp.asarray(tokens), cfg=self.cfg, hooks=hooks,
                  return_type=core_type, attention_mask=mask, stop_at_layer=stop,
                  token_type_ids=None if types is None else jnp.asarray(types))
        out, cache = out if capture else (out, None)
        if return_type == "predictions":
            out = self._predictions(tokens, out)
        return (out, cache) if capture else out

    def _predictions(self, tokens, logits):
        """TransformerLens's "predictions": the argmax token at each [MASK], decoded."""
        tok = T._require(self.tokenizer)
        ids = np.asarray(logits)[np.asarray(tokens) == tok.mask_token_id].argmax(-1)
        predictions = tok.decode(ids.tolist())
        if " " in predictions:
            return [f"Prediction {i}: {p}" for i, p in enumerate(predictions.split(" "))]
        return predictions

    def __call__(self, input, return_type: Optional[str] = "logits", token_type_ids=None,
                 one_zero_attention_mask=None):
        """Run on text, a list of texts, or tokens [batch, pos] / [pos].

        Args:
          return_type: "logits" (MLM logits [batch, pos, d_vocab]), "embeddings" (the encoder
            output [batch, pos, d_model], TransformerLens's `encoder_output`), "predictions"
            (decoded argmax at each [MASK]) or None.
          token_type_ids: int [batch, pos] segment ids (from the tokenizer for text).
          one_zero_attention_mask: [batch, pos], 1 = attend, 0 = padding (from the tokenizer
            for text).
        """
        hooks = self._persistent_hooks()
        return self._run(input, hooks, return_type=return_type, token_type_ids=token_type_ids,
                         one_zero_attention_mask=one_zero_attention_mask, eager=hooks is not None)

    forward = __call__

    def encoder_output(self, tokens, token_type_ids=None, one_zero_attention_mask=None):
        """The final residual stream [batch, pos, d_model] (TransformerLens's encoder_output)."""
        return self(tokens, "embeddings", token_type_ids, one_zero_attention_mask)

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, input, move_to_device: bool = True, truncate: bool = True):
        """str or list[str] -> (tokens, token_type_ids, attention_mask), each [batch, pos],
        with the tokenizer's special tokens and right padding (TransformerLens's to_tokens)."""
        tok = T._require(self.tokenizer)
        enc = tok(input, return_tensors="np", padding=True, truncation=truncate,
                  max_length=self.cfg.n_ctx if truncate else None)
        types = enc.get("token_type_ids")
        if types is None:
            types = np.zeros_like(enc["input_ids"])
        return (jnp.asarray(enc["input_ids"]), jnp.asarray(types),
                jnp.asarray(enc["attention_mask"]))

    def to_str_tokens(self, input, *args, **kwargs):
        """Text (with the tokenizer's special tokens) or token ids -> one string per token."""
        if isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input):
            return [self.to_str_tokens(s) for s in input]
        if isinstance(input, str):
            input = self.to_tokens(input)[0]
        arr = np.asarray(input)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        return T.to_str_tokens(self.tokenizer, arr)

    def get_token_position(self, single_token, input, mode: str = "first", *args, **kwargs) -> int:
        """Position of a token in one text (tokenized with [CLS]/[SEP]) or one row of ids."""
        tokens = self.to_tokens(input)[0] if isinstance(input, str) else input
        return super().get_token_position(single_token, np.asarray(tokens), mode)

    # ------------------------------------------------------------------ weights
    @property
    def W_token_type(self):
        """[n_token_types, d_model]"""
        return self.params["token_type_embed"]["W_token_type"]

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def __repr__(self):
        head = "MLM head" if self.cfg.mlm_head else "no MLM head"
        return (f"HookedEncoder({self.cfg.model_name}: {self.cfg.n_layers} layers, "
                f"d_model={self.cfg.d_model}, {self.cfg.n_heads} heads, {head})")
