"""Encoder-decoders (T5): two runs of the one forward, under TransformerLens's hook names.

A T5 model is a decoder Config with `cross_attention=True`; its encoder is the same stack,
bidirectional (`cfg.encoder_config()`), with its params under `params["encoder"]` and the
embedding shared. The encoder runs first (embed, blocks, final norm), then the decoder, whose
blocks cross-attend to the encoder output. Each run is `run_model` with its own hook runner;
this module maps TransformerLens's HookedEncoderDecoder names onto them:

    hook_embed, encoder.{l}.*, encoder_final_ln.*   -> the encoder run's hook_embed, blocks.{l}.*, ln_final.*
    decoder.{l}.*, decoder_final_ln.*, unembed.*    -> the decoder run's blocks.{l}.*, ln_final.*, unembed.*

(`encoder.*.<hook>` addresses every layer with a leading layer axis, as `blocks.*` does.)
TransformerLens does not hook the decoder's token embedding, so neither does this.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import functools
import re
from collections.abc import Mapping
from typing import Optional

import jax
import jax.numpy as jnp

from jtlens.core.cache import ActivationCache
from jtlens.core.config import Config
from jtlens.core.engine import run_model
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.core.hooks import HookNames, HookRunner, Hooks
from jtlens.core.params import Params
from jtlens.core.pieces import Ctx, final_norm

STACKS = ("encoder", "decoder")
_LAYERLESS = re.compile(r"^(encoder|decoder)\.\*\.")  # encoder.*.<hook>: every layer, stacked
# (TransformerLens prefix, stack, the stack run's own prefix); the first match wins.
_PREFIXES = (("hook_embed", "encoder", "hook_embed"), ("encoder_final_ln.", "encoder", "ln_final."),
             ("encoder.", "encoder", "blocks."), ("decoder_final_ln.", "decoder", "ln_final."),
             ("decoder.", "decoder", "blocks."), ("unembed.", "decoder", "unembed."))


def _stack_configs(cfg: Config) -> dict:
    if not cfg.cross_attention:
        raise ValueError("an encoder-decoder Config has cross_attention=True (a T5 model); this "
                         "one describes a decoder-only or encoder-only model: use jtlens.forward")
    return {"encoder": cfg.encoder_config(), "decoder": cfg}


def to_stack(name: str) -> Optional[tuple]:
    """A TransformerLens name -> (stack, the stack run's name), or None."""
    for outer, stack, inner in _PREFIXES:
        if name.startswith(outer):
            return stack, inner + name[len(outer):]
    return None


def from_stack(stack: str, name: str) -> Optional[str]:
    """(stack, the stack run's name) -> the TransformerLens name, or None for a hook point
    TransformerLens does not have (the decoder's hook_embed)."""
    for outer, s, inner in _PREFIXES:
        if s == stack and name.startswith(inner):
            return outer + name[len(inner):]
    return None


@dataclasses.dataclass(frozen=True)
class EncoderDecoderNames:
    """The hook names of an encoder-decoder, TransformerLens's, resolved onto the two runs."""

    cfg: Config

    @property
    def stacks(self) -> dict:
        return _catalogues(self.cfg)

    def names(self, optional: bool = False) -> list[str]:
        """Every concrete hook name, in execution order (encoder, then decoder)."""
        out = (from_stack(s, n) for s in STACKS for n in self.stacks[s].names(optional))
        return [n for n in out if n is not None]

    def unknown(self, name) -> ValueError:
        layerless = {f"{s}.*.{t}" for s in STACKS for t in self.stacks[s].optional}
        near = difflib.get_close_matches(str(name), self.names(optional=True) + sorted(layerless),
                                         n=5, cutoff=0.4)
        return ValueError(f"Unknown hook name {name!r} for this encoder-decoder."
                          + (f" Nearest valid names: {near}." if near else "")
                          + " Names are TransformerLens's HookedEncoderDecoder ones: hook_embed, "
                            "encoder.{l}.*, encoder_final_ln.*, decoder.{l}.*, decoder_final_ln.*, "
                            "unembed.*")

    def locate(self, name) -> tuple[str, str]:
        """A hook name -> (stack, the stack run's name), validated."""
        where = to_stack(name) if isinstance(name, str) else None
        if where is None or from_stack(*where) is None:
            raise self.unknown(name)
        try:
            self.stacks[where[0]].resolve(where[1])
        except ValueError:
            raise self.unknown(name) from None
        return where

    one = HookNames.one  # the single concrete hook a name selects (its `select` is this class's)

    def select(self, selection) -> list[str]:
        """A capture selection (True, names, `encoder.*.` forms, globs or a predicate) -> the
        concrete names it selects, in execution order."""
        if selection is None or selection is False:
            return []
        if selection is True:
            return self.names()
        everything = self.names(optional=True)
        if callable(selection):
            return [n for n in everything if selection(n)]
        items = [selection] if isinstance(selection, str) else list(selection)
        wanted: set = set()
        for item in items:
            if isinstance(item, str) and any(c in item for c in "?[*") and not _LAYERLESS.match(item):
                hits = fnmatch.filter(self.names(), item)
                if not hits:
                    raise self.unknown(item)
                wanted.update(hits)
                continue
            stack, local = self.locate(item)
            wanted.update(from_stack(stack, n) for n in self.stacks[stack].select(local))
        return [n for n in everything if n in wanted]


@functools.lru_cache(maxsize=None)
def _catalogues(cfg: Config) -> dict:
    return {s: hook_catalogue(c) for s, c in _stack_configs(cfg).items()}


def _renamed(fn, stack: str):
    """A hook function that sees TransformerLens's name in `hook.name`."""
    def call(act, hook):
        hook = copy.copy(hook)
        hook.name = from_stack(stack, hook.name)
        return fn(act, hook)
    return call


def split_hooks(hooks: Optional[Hooks], names: EncoderDecoderNames) -> dict:
    """One `Hooks` per stack run, from a `Hooks` keyed by TransformerLens's names."""
    parts = {s: dict(capture=[], patch={}, add={}, fns=[]) for s in STACKS}
    if hooks is None:
        return {s: None for s in STACKS}
    for name in names.select(hooks.capture):
        stack, local = to_stack(name)
        parts[stack]["capture"].append(local)
    for kind in ("patch", "add"):
        for key, value in getattr(hooks, kind).items():
            stack, local = names.locate(key)
            parts[stack][kind][local] = value
    for key, fns in hooks.fns:
        for name in (names.select(key) if callable(key) else [key]):
            stack, local = names.locate(name)
            parts[stack]["fns"].append((local, [_renamed(f, stack) for f in fns]))
    return {s: Hooks(**p) for s, p in parts.items()}


@functools.partial(jax.tree_util.register_dataclass, data_fields=("encoder", "decoder"),
                   meta_fields=("names",))
@dataclasses.dataclass(eq=False)
class EncoderDecoderCache(Mapping):
    """The activations of an encoder-decoder run, keyed by TransformerLens's names
    (`cache["encoder.0.attn.hook_pattern"]`, `cache["decoder.*.hook_resid_pre"]` stacked).

    `encoder` / `decoder` are the two runs' ActivationCaches (keyed `blocks.{l}.*`)."""

    encoder: ActivationCache
    decoder: ActivationCache
    names: EncoderDecoderNames

    def __getitem__(self, key) -> jax.Array:
        try:
            stack, local = self.names.locate(key)
        except ValueError as err:
            raise KeyError(str(err)) from None
        try:
            return getattr(self, stack)[local]
        except KeyError:
            raise KeyError(f"{key!r} is not in this cache (it holds {len(self)} activations; "
                           f"capture it with names_filter)") from None

    def __iter__(self):
        """The hook names held, in execution order."""
        held = (from_stack(s, n) for s in STACKS for n in getattr(self, s).keys())
        return (n for n in held if n is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def remove_batch_dim(self) -> "EncoderDecoderCache":
        """Drop a batch axis of size 1 from every entry (in place, returns self, as TL)."""
        self.encoder.remove_batch_dim()
        self.decoder.remove_batch_dim()
        return self


# ----------------------------------------------------------------------------- the runs

def encode(params: Params, tokens, cfg: Config, hk: HookRunner, attention_mask=None,
           scan: bool = True):
    """The encoder stack: (output [batch, pos, d_model] after encoder_final_ln, outer records,
    stacked records)."""
    enc_cfg = cfg.encoder_config()
    enc_params = dict(params["encoder"], embed=params["embed"])
    resid, rec, stacked, _, _ = run_model(enc_params, tokens, enc_cfg, hk, None, False,
                                          attention_mask, None, enc_cfg.n_layers, None, scan, None)
    return final_norm(enc_params, resid, Ctx(enc_cfg, hk, rec)), rec, stacked


def _run(params, tokens, decoder_tokens, cfg, hooks, attention_mask, return_type, scan):
    if return_type not in ("logits", None):
        raise ValueError(f"return_type={return_type!r}; an encoder-decoder returns 'logits' or None")
    names = EncoderDecoderNames(cfg)
    split = split_hooks(hooks, names)
    runners = {s: HookRunner(split[s], names.stacks[s]) for s in STACKS}
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    encoded, enc_rec, enc_stacked = encode(params, jnp.asarray(tokens), cfg, runners["encoder"],
                                           mask, scan)
    out, dec_rec, dec_stacked, _, _ = run_model(
        params, jnp.asarray(decoder_tokens), cfg, runners["decoder"], return_type, False, None,
        None, None, None, scan, None, encoder=encoded, encoder_mask=mask)
    records = {"encoder": (enc_rec, enc_stacked), "decoder": (dec_rec, dec_stacked)}
    return out, names, runners, records


def encoder_decoder_forward(params: Params, tokens, decoder_tokens, cfg: Config,
                            hooks: Optional[Hooks] = None, *, attention_mask=None,
                            return_type: Optional[str] = "logits", scan: bool = True):
    """Run a T5 model: logits [batch, decoder_pos, d_vocab] (or None).

    Args:
      tokens: int [batch, pos], the encoder's input. decoder_tokens: int [batch, decoder_pos].
      cfg: the model's Config (cross_attention=True). hooks: a `Hooks` keyed by
        TransformerLens's HookedEncoderDecoder names (patch, add, fns).
      attention_mask: optional [batch, pos] 1/0 padding mask of the encoder input; it masks the
        encoder's self-attention and the decoder's cross-attention keys.
    """
    if hooks is not None and hooks.capture:
        raise ValueError("encoder_decoder_forward returns only the output; capture activations "
                         "with encoder_decoder_forward_with_cache")
    return _run(params, tokens, decoder_tokens, cfg, hooks, attention_mask, return_type, scan)[0]


def encoder_decoder_forward_with_cache(params: Params, tokens, decoder_tokens, cfg: Config,
                                       hooks: Optional[Hooks] = None, *, attention_mask=None,
                                       return_type: Optional[str] = "logits", scan: bool = True):
    """`encoder_decoder_forward`, also returning the activations `hooks.capture` selects (every
    hook when `hooks` is None): (output, EncoderDecoderCache)."""
    hooks = Hooks(capture=True) if hooks is None else hooks
    out, names, runners, records = _run(params, tokens, decoder_tokens, cfg, hooks,
                                        attention_mask, return_type, scan)
    configs = _stack_configs(cfg)
    caches = {s: ActivationCache.from_forward(configs[s], names.stacks[s], runners[s].captured,
                                              *records[s]) for s in STACKS}
    return out, EncoderDecoderCache(caches["encoder"], caches["decoder"], names)
