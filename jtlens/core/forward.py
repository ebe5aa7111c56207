"""The forward: embed -> lax.scan over layer-stacked blocks -> unembed, one function for all families.

`forward(params, tokens, cfg, hooks)` is pure: jit it with `cfg` static, vmap it over patch
values or masks, differentiate it with respect to `add` deltas or params.
"""

from __future__ import annotations

from typing import Optional

from jaxtyping import ArrayLike, Int

from jtlens.core import components as C
from jtlens.core.cache import ActivationCache
from jtlens.core.config import Config
from jtlens.core.engine import run_model
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.core.hooks import HookRunner, Hooks
from jtlens.core.kv_cache import KeyValueCache, check_decoder, check_room
from jtlens.core.params import Params
from jtlens.core.pieces import Ctx, TokensOrResid


def forward(params: Params, tokens: TokensOrResid, cfg: Config, hooks: Optional[Hooks] = None, *,
            return_type: Optional[str] = "logits", loss_per_token: bool = False,
            attention_mask=None, start_at_layer: Optional[int] = None,
            stop_at_layer: Optional[int] = None, loss_tokens=None, scan: bool = True,
            token_type_ids=None):
    """Run the model; returns the output only (`forward_with_cache` also returns activations).

    Args:
      params: layer-stacked params (see `param_shapes`).
      tokens: int [batch, pos]; or, with `start_at_layer`, the residual [batch, pos, d_model].
      cfg: the model's Config (static under jit).
      hooks: a `Hooks` of interventions (patch, add, fns); captures need `forward_with_cache`.
      return_type: "logits" [batch, pos, d_vocab_out], "loss" (scalar, or [batch, pos-1] with
        loss_per_token), "both" ((logits, loss)) or None.
      attention_mask: optional [batch, pos] 1/0 padding mask (shifts positions, masks keys).
      start_at_layer / stop_at_layer: run blocks[start_at_layer:stop_at_layer] only (Python
        slicing, as TransformerLens); with stop_at_layer the output is the residual stream
        entering that layer.
      loss_tokens: tokens for the loss when starting from a residual.
      scan: run the blocks under `lax.scan` (default) or unrolled (see `run_blocks`).
      token_type_ids: int [batch, pos] segment ids for BERT-style encoders (default all 0).

    Concrete tokens and masks are checked here; traced ones (under jit/vmap) only under
    `jtlens.checked`, and an out-of-range id otherwise gives NaN logits (see jtlens/core/checks.py).
    """
    hk = HookRunner(hooks, hook_catalogue(cfg))
    if hk.capturing:
        raise ValueError("forward returns only the output, so it would drop the activations that "
                         "hooks.capture selects: call jtlens.forward_with_cache(...) -> (out, cache)")
    return run_model(params, tokens, cfg, hk, return_type, loss_per_token, attention_mask,
                start_at_layer, stop_at_layer, loss_tokens, scan, token_type_ids)[0]


def forward_with_kv(params: Params, tokens: Int[ArrayLike, "batch pos"], cfg: Config,
                    kv_cache: KeyValueCache, hooks: Optional[Hooks] = None, *,
                    return_type: Optional[str] = "logits", loss_per_token: bool = False,
                    attention_mask=None, scan: bool = True):
    """Run a chunk of tokens [batch, pos] after the ones held in `kv_cache`.

    The chunk attends to the cached keys and values and its positions continue from them, so a
    sequence run chunk by chunk gives the outputs of one full forward (TransformerLens's
    `past_kv_cache`). `attention_mask` [batch, pos] marks padding in the chunk (default none).
    Returns (output as `forward` returns it, the extended KeyValueCache).
    """
    check_decoder(cfg)
    check_room(kv_cache, tokens.shape[1])
    hk = HookRunner(hooks, hook_catalogue(cfg))
    if hk.capturing:
        raise ValueError("forward_with_kv returns the output and the key/value cache only; "
                         "capture activations with jtlens.forward_with_cache on the full sequence")
    out, _, _, _, kv_cache = run_model(params, tokens, cfg, hk, return_type, loss_per_token,
                                  attention_mask, None, None, None, scan, None, kv_cache)
    return out, kv_cache


def forward_with_cache(params: Params, tokens: TokensOrResid, cfg: Config,
                       hooks: Optional[Hooks] = None, *,
                       return_type: Optional[str] = "logits", loss_per_token: bool = False,
                       attention_mask=None, start_at_layer: Optional[int] = None,
                       stop_at_layer: Optional[int] = None, loss_tokens=None, scan: bool = True,
                       token_type_ids=None):
    """`forward`, also returning the activations `hooks.capture` selects (all of them when
    `hooks` is None): `(output, ActivationCache)`. Arguments as in `forward`."""
    hooks = Hooks(capture=True) if hooks is None else hooks
    names = hook_catalogue(cfg)
    hk = HookRunner(hooks, names)
    out, rec, stacked, start, _ = run_model(params, tokens, cfg, hk, return_type, loss_per_token,
                                       attention_mask, start_at_layer, stop_at_layer,
                                       loss_tokens, scan, token_type_ids)
    return out, ActivationCache.from_forward(cfg, names, hk.captured, rec, stacked,
                                             first_layer=start)


def context(cfg: Config, hooks: Optional[Hooks], batch: int, n_pos: int) -> Ctx:
    """A context for running pieces of the model (blocks, unembed) outside `forward`, on
    unpadded inputs of [batch, n_pos] tokens, with `hooks` applied."""
    if cfg.positional_embedding_type == "relative_positional_bias":
        # the bias table is computed once per run inside `forward` (engine._relative_bias)
        raise ValueError("running the layers of a relative-position-bias model (T5) one by one "
                         "is not implemented: run the whole model with forward / "
                         "encoder_decoder_forward and edit activations through hooks")
    return Ctx(cfg, HookRunner(hooks, hook_catalogue(cfg)), {},
               C.positions_from_mask(None, n_pos, batch))
