"""HookedTransformer: TransformerLens's object API as a thin facade over the pure functions.

The facade holds (cfg, params, tokenizer) and nothing else; every call goes through
`jtlens.forward`. Plain calls and `run_with_cache` are jitted (the capture selection is
resolved to concrete names first, so a `names_filter` lambda does not force a recompile).
`run_with_hooks` with Python hook functions runs the same compiled forward with the hooked
points calling back into Python (`host_hooks`), like TransformerLens: hook functions see
concrete activations and `hook.layer()` as an int, and a new closure costs no compilation.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core import cache_analysis as analysis
from jtlens.core import tokens as T
from jtlens.core.compilation_cache import quick_jit
from jtlens.core.checks import check_attention_mask, check_tokens
from jtlens.core.config import Config
from jtlens.core.factored_matrix import FactoredMatrix, composition_scores
from jtlens.experiments.generation import model_generate
from jtlens.tl.hook_points import HookRegistry
from jtlens.tl.host_hooks import call_with_host_hooks
from jtlens.core.hooks import Hooks
from jtlens.core.kv_cache import KeyValueCache, check_room
from jtlens.core.forward import forward, forward_with_cache, forward_with_kv
from jtlens.core.hook_catalogue import hook_catalogue, hook_names
from jtlens.tl.module_views import LayerViews, expand_kv
from jtlens.tl.tl_compat import _DEFAULT, TransformerLensCompat, config_with_vocab
from jtlens.core.params import init_params
from jtlens.core.weights import NO_PROCESSING

_STATIC = ("cfg", "return_type", "loss_per_token", "start_at_layer", "stop_at_layer", "scan")
_forward_jit = quick_jit(forward, static_argnames=_STATIC)
_forward_with_cache_jit = quick_jit(forward_with_cache, static_argnames=_STATIC)
_forward_kv_jit = quick_jit(forward_with_kv, static_argnames=("cfg", "return_type", "loss_per_token"))


class Output(NamedTuple):
    logits: jax.Array
    loss: jax.Array


class HookedTransformer(HookRegistry, TransformerLensCompat):
    """A decoder-only transformer with TransformerLens's API.

    Args:
      cfg: the Config. params: layer-stacked params (default: `init_params(cfg, seed 0)`).
      tokenizer: a Hugging Face tokenizer (needed for string inputs).
    """

    # Registered Python hook functions run as callbacks from the compiled forward (host_hooks);
    # False runs such calls eagerly, layer by layer.
    _host_callbacks = True

    def __init__(self, cfg: Config, params: Optional[dict] = None, tokenizer: Any = None,
                 default_padding_side: str = "right", move_to_device: bool = True):
        cfg = config_with_vocab(cfg, tokenizer)  # also takes a dict or a TransformerLens config
        if cfg.cross_attention:
            raise ValueError(f"{cfg.model_name} is an encoder-decoder ({cfg.original_architecture}):"
                             f" use jtlens.HookedEncoderDecoder (TransformerLens's T5 class)")
        self.cfg = cfg
        self.params = params if params is not None else init_params(self.cfg, jax.random.PRNGKey(0))
        self.set_tokenizer(tokenizer, default_padding_side)
        self._init_hook_registry()
        # PRNGKey(0) on the first sampling generate(), then advanced by each: made here, it would
        # cost every new process a compiled program (0.05-0.1 s) that most never use
        self._sample_key = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_name: str, **kwargs) -> "HookedTransformer":
        """Load a checkpoint (hub name, alias, local or converted folder, GGUF file) with
        TransformerLens's default processing (fold_ln, center_writing_weights, center_unembed,
        fold_value_biases). See `jtlens.loading.load` for the options; `mesh=` places the params
        on a device mesh (`jtlens.sharding`)."""
        from jtlens.io.loading import load

        padding = kwargs.pop("default_padding_side", "right")
        device = kwargs.pop("device", None)  # TransformerLens's: "cpu", "cuda", "cuda:1", a jax.Device
        kwargs.pop("move_to_device", None)  # params land on JAX's default device (or `device`)
        cfg, params, tokenizer = load(model_name, **kwargs)
        model = cls(cfg, params, tokenizer, default_padding_side=padding)
        return model if device is None else model.to(str(device) if hasattr(device, "type") else device)

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, **kwargs) -> "HookedTransformer":
        """`from_pretrained` with every weight-processing step off (raw Hugging Face numerics)."""
        return cls.from_pretrained(model_name, **{**NO_PROCESSING, **kwargs})

    # ------------------------------------------------------------------ inputs
    def _inputs(self, input, prepend_bos, padding_side, attention_mask):
        """Any accepted input -> (tokens [batch, pos], attention_mask or None)."""
        text = T.maybe_strings(input)
        if text is None:
            if input is None or np.asarray(input).dtype.kind in "USO":
                raise TypeError(f"the model takes text (a str or list of str) or integer token "
                                f"ids [batch, pos], got {type(input).__name__}"
                                f"{'' if input is None else ' of ' + str(np.asarray(input).dtype)};"
                                f" turn text into ids with model.to_tokens(text)")
            tokens = jnp.asarray(input)
            if tokens.ndim == 1:
                tokens = tokens[None]
            return tokens, attention_mask
        tokens, mask = self.to_tokens(text, prepend_bos=prepend_bos, padding_side=padding_side,
                                      return_mask=True)
        return tokens, attention_mask if attention_mask is not None else mask

    def _run(self, input, hooks: Optional[Hooks], *, return_type="logits", loss_per_token=False,
             prepend_bos=_DEFAULT, padding_side=_DEFAULT, attention_mask=None,
             start_at_layer=None, stop_at_layer=None, tokens=None, eager=False, capture=False):
        if start_at_layer is None:
            tok, mask = self._inputs(input, prepend_bos, padding_side, attention_mask)
            check_tokens(tok, self.cfg)  # inside the jitted forward the ids are no longer known
        else:
            tok, mask = jnp.asarray(input), attention_mask
        if mask is not None:
            mask = jnp.asarray(mask)
            check_attention_mask(mask, tok.shape[:2])  # concrete here, traced inside the forward
        kwargs = dict(return_type=return_type, loss_per_token=loss_per_token, attention_mask=mask,
                      start_at_layer=start_at_layer, stop_at_layer=stop_at_layer,
                      loss_tokens=None if tokens is None else jnp.asarray(tokens))
        if eager and self._host_callbacks and hooks is not None and hooks.fns:
            out = call_with_host_hooks(_forward_with_cache_jit if capture else _forward_jit,
                                       hooks, params=self.params, tokens=tok, cfg=self.cfg,
                                       **kwargs)
        elif eager:
            out = (forward_with_cache if capture else forward)(self.params, tok, cfg=self.cfg,
                                                               hooks=hooks, scan=False, **kwargs)
        else:
            run = _forward_with_cache_jit if capture else _forward_jit
            out = run(self.params, tok, cfg=self.cfg, hooks=hooks, **kwargs)
        out, cache = out if capture else (out, None)
        if return_type == "both" and stop_at_layer is None:
            out = Output(*out)
        return (out, cache) if capture else out

    def __call__(self, input, return_type: Optional[str] = "logits", loss_per_token: bool = False,
                 prepend_bos=_DEFAULT, padding_side=_DEFAULT, attention_mask=None,
                 start_at_layer: Optional[int] = None, stop_at_layer: Optional[int] = None,
                 tokens=None, past_kv_cache: Optional[KeyValueCache] = None):
        """Run the model on text, a list of texts, tokens [batch, pos] / [pos], or (with
        start_at_layer) a residual [batch, pos, d_model].

        With `past_kv_cache` (a `KeyValueCache`) the input continues the tokens held there and
        the cache is extended in place (unless frozen), as TransformerLens's cache workflow.
        Returns logits [batch, pos, d_vocab_out], the loss, `Output(logits, loss)` ("both"),
        None, or the residual when stop_at_layer is set.
        """
        hooks = self._persistent_hooks()
        if past_kv_cache is not None:
            return self._run_cached(input, past_kv_cache, hooks, return_type, loss_per_token,
                                    prepend_bos, padding_side, attention_mask)
        return self._run(input, hooks, return_type=return_type, loss_per_token=loss_per_token,
                         prepend_bos=prepend_bos, padding_side=padding_side,
                         attention_mask=attention_mask, start_at_layer=start_at_layer,
                         stop_at_layer=stop_at_layer, tokens=tokens, eager=hooks is not None)

    forward = __call__

    def _run_cached(self, input, cache: KeyValueCache, hooks, return_type, loss_per_token,
                    prepend_bos, padding_side, attention_mask):
        tok, mask = self._inputs(input, prepend_bos, padding_side, attention_mask)
        check_tokens(tok, self.cfg)
        check_room(cache, tok.shape[1])  # inside the jitted forward the cache's length is unknown
        out, new = _forward_kv_jit(self.params, tok, self.cfg, cache, hooks,
                                   return_type="logits" if return_type == "both" else return_type,
                                   loss_per_token=loss_per_token,
                                   attention_mask=None if mask is None else jnp.asarray(mask))
        if return_type == "both":
            out = Output(out, self.loss_fn(out, tok, mask, loss_per_token))
        if not cache.frozen:
            cache.k, cache.v, cache.mask, cache.length = new.k, new.v, new.mask, new.length
        return out

    def generate(self, input="", max_new_tokens: int = 10, stop_at_eos: bool = True,
                 eos_token_id=None, do_sample: bool = True, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, temperature: float = 1.0,
                 freq_penalty: float = 0.0, use_past_kv_cache: bool = True, prepend_bos=_DEFAULT,
                 padding_side=_DEFAULT, return_type: Optional[str] = "input",
                 verbose: bool = True, *, key: Optional[jax.Array] = None, attention_mask=None,
                 hooks: Optional[Hooks] = None, return_cache: bool = False, names_filter=None):
        """TransformerLens's `generate`, as one compiled decode loop (see `jtlens.generation`).

        input: a string, a list of strings (padded on the left) or int tokens [batch, pos]
        (with `attention_mask` if they are left-padded). Returns text ("str"; one string for one
        prompt) or tokens [batch, pos + n_new] ("tokens"); "input" answers in the input's kind.
        Hooks added with `add_hook` / `with model.hooks(...)` and `hooks` (a `Hooks`) act at
        every decode step; hook functions are traced once (write them in jax.numpy).
        `key` seeds the sampling (default: the model's own key, advanced on every call).
        `return_cache=True` also returns the ActivationCache of the generated sequence
        (`names_filter` as in run_with_cache).
        """
        if key is None and do_sample and temperature > 0:
            if self._sample_key is None:
                self._sample_key = jax.random.PRNGKey(0)
            self._sample_key, key = jax.random.split(self._sample_key)
        persistent = self._persistent_hooks()
        fns = (() if hooks is None else hooks.fns) + (persistent.fns if persistent else ())
        capture = None if hooks is None else hooks.capture
        if return_cache:
            capture = tuple(hook_catalogue(self.cfg).select(
                True if names_filter is None else names_filter))
        if hooks is not None or fns or capture:
            hooks = Hooks(capture=capture, patch={} if hooks is None else hooks.patch,
                          add={} if hooks is None else hooks.add, fns=fns)
        return model_generate(self, input, max_new_tokens, stop_at_eos=stop_at_eos,
                              eos_token_id=eos_token_id, prepend_bos=prepend_bos,
                              padding_side=padding_side, return_type=return_type, key=key,
                              attention_mask=attention_mask, hooks=hooks, do_sample=do_sample,
                              top_k=top_k, top_p=top_p, temperature=temperature,
                              freq_penalty=freq_penalty, use_past_kv_cache=use_past_kv_cache,
                              verbose=verbose)

    def run_with_cache(self, *args, names_filter=None, remove_batch_dim: bool = False,
                       return_cache_object: bool = True, pos_slice=None, **kwargs):
        """Run and return `(output, ActivationCache)`.

        names_filter: None (every hook), a name, a list of names/aliases/`blocks.*` forms/globs,
        or a predicate on the full name. pos_slice: keep these positions of every activation
        (see `ActivationCache.slice_positions`).
        """
        names = tuple(hook_catalogue(self.cfg).select(True if names_filter is None else names_filter))
        persistent = self._persistent_hooks()
        hooks = Hooks(capture=names, fns=persistent.fns if persistent else ())
        out, cache = self._run(*args, hooks=hooks, eager=persistent is not None, capture=True,
                               **kwargs)
        cache = cache.with_model(self)
        if pos_slice is not None:
            cache = cache.slice_positions(pos_slice)
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, (cache if return_cache_object else cache.to_dict())

    def run_with_hooks(self, *args, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (),
                       reset_hooks_end: bool = True, clear_contexts: bool = False, **kwargs):
        """Run with `fwd_hooks=[(name_or_predicate, fn)]`, `fn(act, hook) -> act | None`.

        Backward hooks do not exist in jtlens: gradients are `jax.grad` (see `jtlens.grads`).
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*args, **kwargs)

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, input, prepend_bos=_DEFAULT, padding_side=_DEFAULT, move_to_device: bool = True,
                  truncate: bool = True, return_mask: bool = False):
        """str or list[str] -> tokens [batch, pos] (and the padding mask with return_mask).

        truncate=False returns the whole sequence (the model then rejects it past n_ctx);
        move_to_device is accepted for TransformerLens code: arrays land on JAX's default device."""
        bos = self.cfg.default_prepend_bos if prepend_bos is _DEFAULT or prepend_bos is None else prepend_bos
        side = self._padding_side() if padding_side is _DEFAULT or padding_side is None else padding_side
        tokens, mask = T.to_tokens(self.tokenizer, self.cfg, input, bos, side, truncate)
        if side == "right":
            mask = None  # as TransformerLens: right padding needs no mask under causal attention
        return (jnp.asarray(tokens), mask) if return_mask else jnp.asarray(tokens)

    def to_string(self, tokens):
        return T.to_string(self.tokenizer, tokens)

    def to_str_tokens(self, input, prepend_bos=_DEFAULT, padding_side=_DEFAULT):
        if isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos, padding_side)[0]
        arr = np.asarray(input)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        return T.to_str_tokens(self.tokenizer, arr)

    def to_single_token(self, string: str) -> int:
        return T.to_single_token(self.tokenizer, self.cfg, string)

    def to_single_str_token(self, int_token: int) -> str:
        return self.to_str_tokens(np.asarray([int_token]))[0]

    def get_token_position(self, single_token, input, mode: str = "first", prepend_bos=_DEFAULT,
                           padding_side=_DEFAULT) -> int:
        tok_id = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else np.asarray(input)
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError("get_token_position takes a single prompt (batch size 1)")
            tokens = tokens[0]
        return T.token_position(tokens, tok_id, mode)

    def loss_fn(self, logits, tokens, attention_mask=None, per_token: bool = False):
        from jtlens.core.components import lm_cross_entropy_loss

        return lm_cross_entropy_loss(logits, jnp.asarray(tokens), attention_mask, per_token)

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's QK circuit W_Q W_K^T: [n_layers, n_heads] of [d_model, d_model]."""
        return FactoredMatrix(self.W_Q, jnp.swapaxes(self.W_K, -1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's OV circuit W_V W_O: [n_layers, n_heads] of [d_model, d_model]."""
        return FactoredMatrix(self.W_V, self.W_O)

    def all_composition_scores(self, mode: str):
        """Q-, K- or V-composition of every earlier head's OV into every later head:
        [n_layers, n_heads, n_layers, n_heads], zero unless the right head's layer is later."""
        right = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}
        if mode not in right:
            raise ValueError(f"mode must be 'Q', 'K' or 'V', not {mode!r}")
        scores = composition_scores(self.OV, right[mode]())
        layers = jnp.arange(self.cfg.n_layers)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return jnp.where(later, scores, 0.0)

    def tokens_to_residual_directions(self, tokens):
        """W_U columns of `tokens` (a str, int, [pos] or [batch, pos]) -> [..., d_model]."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        elif np.size(tokens) == 1:
            tokens = int(np.asarray(tokens).reshape(()))  # TransformerLens: one token -> [d_model]
        return analysis.tokens_to_residual_directions(self.W_U, tokens)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True):
        """Sum of attn b_O (and mlp b_out) of the layers before `layer` -> [d_model]."""
        return analysis.accumulated_bias(self.params, layer, mlp_input, include_mlp_biases)

    def hook_names(self, optional: bool = False) -> list[str]:
        return hook_names(self.cfg, optional)

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self):
        return self.params["embed"]["W_E"]

    @property
    def W_pos(self):
        return self.params["pos_embed"]["W_pos"]

    @property
    def W_E_pos(self):
        return jnp.concatenate([self.W_E, self.W_pos], axis=0)

    @property
    def W_U(self):
        return self.params["unembed"]["W_U"]

    @property
    def b_U(self):
        return self.params["unembed"]["b_U"]

    def _attn(self, name):
        x = self.params["blocks"]["attn"][name]
        return expand_kv(name, x, self.cfg) if name in ("W_K", "W_V", "b_K", "b_V") else x

    def _mlp(self, name):
        if self.cfg.attn_only:
            raise AttributeError(f"{name}: this model is attention-only")
        return self.params["blocks"]["mlp"].get(name)

    W_Q = property(lambda self: self._attn("W_Q"), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._attn("W_K"), doc="[n_layers, n_heads, d_model, d_head] (GQA expanded)")
    W_V = property(lambda self: self._attn("W_V"), doc="[n_layers, n_heads, d_model, d_head] (GQA expanded)")
    W_O = property(lambda self: self._attn("W_O"), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._attn("b_Q"), doc="[n_layers, n_heads, d_head]")
    b_K = property(lambda self: self._attn("b_K"), doc="[n_layers, n_heads, d_head]")
    b_V = property(lambda self: self._attn("b_V"), doc="[n_layers, n_heads, d_head]")
    b_O = property(lambda self: self._attn("b_O"), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._mlp("W_in"), doc="[n_layers, d_model, d_mlp]")
    W_gate = property(lambda self: self._mlp("W_gate"), doc="[n_layers, d_model, d_mlp] or None")
    W_out = property(lambda self: self._mlp("W_out"), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._mlp("b_in"), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._mlp("b_out"), doc="[n_layers, d_model]")

    @property
    def blocks(self) -> LayerViews:
        """Per-layer views: `model.blocks[l].attn.W_V` is `model.W_V[l]`."""
        return LayerViews(self)

    def __repr__(self):
        return (f"HookedTransformer({self.cfg.model_name}: {self.cfg.n_layers} layers, "
                f"d_model={self.cfg.d_model}, {self.cfg.n_heads} heads, vocab {self.cfg.d_vocab})")
