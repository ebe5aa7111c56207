"""The hook points a config has, read off the forward itself: `hook_catalogue(cfg)` traces
`run_model` once with shapes only and notes every hook point it fires, in order, and which of
them are optional.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.core.engine import run_model
from jtlens.core.hooks import HookNames, HookRunner
from jtlens.core.params import param_shapes


class _NameRecorder(HookRunner):
    """A runner that edits nothing, fires every hook point and notes them in order, with the
    optional ones: those behind a `wants` check (TransformerLens's `use_*` flags), which this
    runner answers yes so that they fire too."""

    def __init__(self):
        super().__init__(None, None)
        self.fired: dict[str, bool] = {}   # template -> fired inside a block
        self.optional: set[str] = set()

    def wants(self, template: str) -> bool:
        self.optional.add(template)
        return True

    def edited(self, template: str) -> bool:
        return False

    def __call__(self, template, act, record, layer=None):
        self.fired.setdefault(template, layer is not None)
        return act


@functools.lru_cache(maxsize=None)
def hook_catalogue(cfg: Config) -> HookNames:
    """The hook points of `cfg`, read off the forward itself (traced once with shapes only)."""
    shapes = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                                    param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return_type = "logits" if cfg.mlm_head or not cfg.post_ln else None
    recorder = _NameRecorder()
    # a T5 decoder reads an encoder output (one position is enough for the shapes)
    encoder = jax.ShapeDtypeStruct((1, 1, cfg.d_model), jnp.float32) if cfg.cross_attention else None
    jax.eval_shape(lambda p, t, e: run_model(p, t, cfg, recorder, return_type, False, None, None,
                                             None, None, True, None, encoder=e)[0],
                   shapes, tokens, encoder)
    everything = recorder.fired
    default = {t: b for t, b in everything.items() if t not in recorder.optional}
    outer = [t for t, in_block in default.items() if not in_block]
    first_block = next((i for i, in_block in enumerate(default.values()) if in_block), len(default))
    pre = tuple(outer[:first_block])
    return HookNames(pre=pre, templates=tuple(t for t, b in default.items() if b),
                     optional=tuple(t for t, b in everything.items() if b),
                     post=tuple(outer[first_block:]), n_layers=cfg.n_layers)


def hook_names(cfg: Config, optional: bool = False) -> list[str]:
    """Every concrete hook name of `cfg`, in execution order (what a full cache holds).
    `optional=True` adds the hooks TransformerLens keeps behind `use_*` flags."""
    if cfg.cross_attention:  # this catalogue is the decoder run's, under blocks.* names
        raise ValueError("an encoder-decoder (T5) has encoder.* and decoder.* hooks: list them "
                         "with HookedEncoderDecoder.hook_names() or "
                         "jtlens.core.encoder_decoder.EncoderDecoderNames(cfg).names()")
    return hook_catalogue(cfg).names(optional)
