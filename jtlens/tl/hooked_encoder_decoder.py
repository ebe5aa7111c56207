"""HookedEncoderDecoder: TransformerLens's T5 API over the pure encoder-decoder forward.

The facade holds (cfg, params, tokenizer). Calls and `run_with_cache` are jitted;
`run_with_hooks` runs the forward eagerly (layers unrolled) so hook functions see concrete
activations. Hook names are TransformerLens's: `hook_embed`, `encoder.{l}.*`,
`encoder_final_ln.*`, `decoder.{l}.*` (with `cross_attn.*`, `hook_cross_attn_out`,
`hook_resid_mid_cross`, `ln3.*`), `decoder_final_ln.*`, `unembed.*`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core import tokens as T
from jtlens.core.compilation_cache import quick_jit
from jtlens.core.checks import check_attention_mask, check_tokens
from jtlens.core.config import Config
from jtlens.core.encoder_decoder import (EncoderDecoderNames, encoder_decoder_forward,
                                         encoder_decoder_forward_with_cache)
from jtlens.core.hooks import Hooks
from jtlens.core.params import check_and_cast, init_params
from jtlens.experiments.encoder_decoder_generation import generate_encoder_decoder
from jtlens.io.loading import load_no_processing

_STATIC = ("cfg", "return_type", "scan")
_forward_jit = quick_jit(encoder_decoder_forward, static_argnames=_STATIC)
_forward_with_cache_jit = quick_jit(encoder_decoder_forward_with_cache, static_argnames=_STATIC)


_LAYER_WEIGHTS = {**dict.fromkeys(("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"), "attn"),
                  **dict.fromkeys(("W_in", "W_out", "b_in", "b_out"), "mlp")}


def _rows(x) -> np.ndarray:
    """Token ids as [batch, pos] (a single row [pos] gets a batch axis)."""
    x = np.asarray(x)
    return x[None] if x.ndim == 1 else x


class HookedEncoderDecoder:
    """A T5 encoder-decoder with TransformerLens's HookedEncoderDecoder API.

    Args:
      cfg: a Config with cross_attention=True (the decoder's; the encoder is derived).
      params: layer-stacked params (default: random). tokenizer: a Hugging Face T5 tokenizer
        (needed for text inputs and for `generate`'s defaults).
    """

    def __init__(self, cfg: Config, params: Optional[dict] = None, tokenizer: Any = None):
        if not cfg.cross_attention:
            raise ValueError("HookedEncoderDecoder needs an encoder-decoder Config "
                             "(cross_attention=True); use HookedTransformer for decoders")
        self.cfg = cfg
        self.params = check_and_cast(init_params(cfg, jax.random.PRNGKey(0)) if params is None
                                     else params, cfg)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, model_name: str, dtype: str = "float32",
                        **kwargs) -> "HookedEncoderDecoder":
        """Load a T5ForConditionalGeneration checkpoint (a local save_pretrained folder or a hub
        name) without weight processing, as TransformerLens does."""
        cfg, params, tokenizer = load_no_processing(model_name, dtype=dtype, **kwargs)
        if not cfg.cross_attention:
            raise ValueError(f"{model_name} is a {cfg.original_architecture}, not an "
                             f"encoder-decoder; load it with HookedTransformer.from_pretrained")
        return cls(cfg, params, tokenizer)

    # ------------------------------------------------------------------ running
    def _encoder_inputs(self, input, one_zero_attention_mask):
        """(tokens [batch, pos], mask or None), checked; text gets the tokenizer's mask."""
        if T.maybe_strings(input) is not None:
            tokens, mask = self.to_tokens(input)
            mask = mask if one_zero_attention_mask is None else one_zero_attention_mask
        else:
            tokens, mask = _rows(input), one_zero_attention_mask
        check_tokens(tokens, self.cfg)
        if mask is not None:
            mask = jnp.asarray(mask)
            check_attention_mask(mask, tokens.shape)
        return jnp.asarray(tokens), mask

    def _inputs(self, input, decoder_input, one_zero_attention_mask):
        """(tokens, decoder tokens, mask); a text input without a decoder input gets one
        decoder start token per row (TransformerLens: the pad token)."""
        tokens, mask = self._encoder_inputs(input, one_zero_attention_mask)
        if decoder_input is None:
            if T.maybe_strings(input) is None:
                raise ValueError("decoder_input is needed when the input is tokens (int "
                                 "[batch, decoder_pos], starting with the decoder start token)")
            decoder_input = np.full((tokens.shape[0], 1), self._start_token())
        decoder_input = _rows(decoder_input)
        check_tokens(decoder_input, self.cfg)
        return tokens, jnp.asarray(decoder_input), mask

    def _start_token(self) -> int:
        if self.cfg.decoder_start_token_id is not None:
            return self.cfg.decoder_start_token_id
        return T._require(self.tokenizer).pad_token_id

    def _run(self, input, decoder_input=None, return_type: Optional[str] = "logits",
             one_zero_attention_mask=None, hooks: Optional[Hooks] = None, capture: bool = False):
        tokens, decoder, mask = self._inputs(input, decoder_input, one_zero_attention_mask)
        eager = hooks is not None and bool(hooks.fns)
        if capture:
            run = encoder_decoder_forward_with_cache if eager else _forward_with_cache_jit
        else:
            run = encoder_decoder_forward if eager else _forward_jit
        extra = dict(scan=False) if eager else {}
        return run(self.params, tokens, decoder, cfg=self.cfg, hooks=hooks, attention_mask=mask,
                   return_type=return_type, **extra)

    def __call__(self, input, decoder_input=None, return_type: Optional[str] = "logits",
                 one_zero_attention_mask=None):
        """Logits [batch, decoder_pos, d_vocab] (or None) for text or tokens [batch, pos].

        decoder_input: int [batch, decoder_pos] (text inputs default to one start token).
        one_zero_attention_mask: [batch, pos], 1 = attend, 0 = padding (from the tokenizer for
        text)."""
        return self._run(input, decoder_input, return_type, one_zero_attention_mask)

    forward = __call__

    def run_with_cache(self, *args, names_filter=None, remove_batch_dim: bool = False, **kwargs):
        """(logits, EncoderDecoderCache); names_filter as in HookedTransformer (None = all)."""
        names = tuple(self.names.select(True if names_filter is None else names_filter))
        out, cache = self._run(*args, hooks=Hooks(capture=names), capture=True, **kwargs)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    def run_with_hooks(self, *args, fwd_hooks: Sequence = (), **kwargs):
        """Run with `fwd_hooks=[(name_or_predicate, fn)]`, `fn(act, hook) -> act | None`."""
        return self._run(*args, hooks=Hooks(fns=list(fwd_hooks)) if fwd_hooks else None, **kwargs)

    def generate(self, input: Union[str, Any] = "", one_zero_attention_mask=None,
                 max_new_tokens: int = 10, stop_at_eos: bool = True,
                 eos_token_id: Optional[Union[int, Sequence[int]]] = None, do_sample: bool = True,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 temperature: float = 1.0, freq_penalty: float = 0.0,
                 return_type: Optional[str] = "input", verbose: bool = True, seed: int = 0):
        """TransformerLens's HookedEncoderDecoder.generate: decoder tokens [batch, 1 + new]
        (starting with the start token), or the decoded text for a text input. A finished row
        is padded with the EOS token. `seed` seeds sampling (jtlens has no global RNG)."""
        tokens, mask = self._encoder_inputs(input, one_zero_attention_mask)
        stop, padding = [], 0
        if stop_at_eos:
            eos = eos_token_id if eos_token_id is not None else T._require(self.tokenizer).eos_token_id
            if isinstance(eos, (int, np.integer)):
                stop, padding = [int(eos)], int(eos)
            else:  # several stop tokens: pad with the tokenizer's EOS, as TransformerLens
                stop = list(eos)
                own = getattr(self.tokenizer, "eos_token_id", None)
                padding = own if own is not None else stop[0]
        out = generate_encoder_decoder(
            self.params, self.cfg, tokens, max_new_tokens, attention_mask=mask,
            decoder_start_token_id=self._start_token(), stop_tokens=stop, eos_padding=padding,
            key=jax.random.PRNGKey(seed), do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, freq_penalty=freq_penalty)
        if return_type == "str" or (return_type == "input" and isinstance(input, str)):
            return T._require(self.tokenizer).decode(out[0], skip_special_tokens=True)
        return jnp.asarray(out)

    # ------------------------------------------------------------------ names and tokens
    @property
    def names(self) -> EncoderDecoderNames:
        return EncoderDecoderNames(self.cfg)

    def hook_names(self, optional: bool = False) -> list[str]:
        """Every hook name, in execution order (optional: also the use_* flags' hooks)."""
        return self.names.names(optional)

    def to_tokens(self, input, move_to_device: bool = True, truncate: bool = True):
        """str or list[str] -> (tokens, attention_mask), each [batch, pos], right-padded."""
        enc = T._require(self.tokenizer)(input, return_tensors="np", padding=True,
                                         truncation=truncate,
                                         max_length=self.cfg.n_ctx if truncate else None)
        return jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])

    # ------------------------------------------------------------------ weights
    W_E = property(lambda self: self.params["embed"]["W_E"], doc="[d_vocab, d_model]")
    W_U = property(lambda self: self.params["unembed"]["W_U"], doc="[d_model, d_vocab]")
    b_U = property(lambda self: self.params["unembed"]["b_U"], doc="[d_vocab]")

    def __getattr__(self, name: str):
        """W_Q, b_Q, ..., W_in, b_out: every encoder then decoder layer's weight, stacked
        [2 * n_layers, ...], as TransformerLens's properties."""
        group = _LAYER_WEIGHTS.get(name)
        if group is None or "params" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return jnp.concatenate([self.params["encoder"]["blocks"][group][name],
                                self.params["blocks"][group][name]])

    def all_head_labels(self) -> list[str]:
        L, H = self.cfg.n_layers, self.cfg.n_heads
        return ([f"EL{l}H{h}" for l in range(L) for h in range(H)]
                + [f"DL{l}H{h}" for l in range(L) for h in range(H)])

    def __repr__(self):
        return (f"HookedEncoderDecoder({self.cfg.model_name}: {self.cfg.n_layers} + "
                f"{self.cfg.n_layers} layers, d_model={self.cfg.d_model}, {self.cfg.n_heads} heads)")
