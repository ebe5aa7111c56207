"""Gradients with respect to activations: `jax.grad` instead of `retain_grad`.

A zero `add` delta at a hook leaves the forward unchanged, and the gradient of a metric with
respect to that delta is the gradient with respect to the activation. All requested hooks get
their delta in one forward, so one backward pass returns every gradient.

    grads = grad_wrt(model, tokens, metric, ["blocks.1.hook_mlp_out", "hook_embed"])
    value, gcache = grad_cache(model.params, model.cfg, tokens, metric)   # every hook
    value, gcache = grad_cache(model, "The cat sat", metric)              # the same, from text

Every function takes `(params, cfg, tokens, ...)` or `(model, tokens_or_text, ...)`. An
encoder-decoder (T5, `cfg.cross_attention`) also takes `decoder_tokens=` [batch, decoder_pos];
its hook names are TransformerLens's (`encoder.{l}.*`, `decoder.{l}.*`, ...) and its caches
`EncoderDecoderCache`s.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jtlens.core.cache import ActivationCache
from jtlens.core.config import Config
from jtlens.core.encoder_decoder import (STACKS, EncoderDecoderNames, encoder_decoder_forward,
                                         encoder_decoder_forward_with_cache, from_stack)
from jtlens.core.hooks import Hooks
from jtlens.core.forward import forward, forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue

Metric = Callable[[Any], jax.Array]


def model_or_params(fn: Callable) -> Callable:
    """Let `fn(params, cfg, tokens, ...)` also be called as `fn(model, tokens_or_text, ...)`, with
    text tokenized as `model(...)` does (its padding mask passed on)."""
    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        if isinstance(first, dict):
            return fn(first, *args, **kwargs)
        model = first
        if "tokens" in kwargs:
            args = (kwargs.pop("tokens"),) + args
        if not args:
            raise TypeError(f"{fn.__name__}(model, tokens, ...): the tokens (or text) are missing")
        if model.cfg.cross_attention:  # HookedEncoderDecoder: text gets one start token per row
            tokens, kwargs["decoder_tokens"], mask = model._inputs(
                args[0], kwargs.pop("decoder_tokens", None), kwargs.pop("attention_mask", None))
        else:
            tokens, mask = model._inputs(args[0], None, None, kwargs.pop("attention_mask", None))
        if mask is not None:
            kwargs["attention_mask"] = mask
        return fn(model.params, model.cfg, tokens, *args[1:], **kwargs)

    return wrapper


def catalogue(cfg: Config):
    """The hook names of `cfg`'s model (`select`, `one`): an encoder-decoder's are TransformerLens's
    HookedEncoderDecoder ones."""
    return EncoderDecoderNames(cfg) if cfg.cross_attention else hook_catalogue(cfg)


def _forward(params, tokens, cfg: Config, hooks: Hooks, fw: dict):
    """(logits, cache or None when nothing is captured): the forward of a decoder, or of an
    encoder-decoder on `fw["decoder_tokens"]`."""
    if cfg.cross_attention:
        fw = dict(fw)
        decoder = fw.pop("decoder_tokens", None)
        if decoder is None:
            raise ValueError("an encoder-decoder (T5) needs decoder_tokens=[batch, decoder_pos] "
                             "(starting with the decoder start token) beside the encoder's tokens")
        run = encoder_decoder_forward_with_cache if hooks.capture else encoder_decoder_forward
        inputs = (tokens, decoder)
    else:
        run, inputs = (forward_with_cache if hooks.capture else forward), (tokens,)
    out = run(params, *inputs, cfg, hooks, return_type="logits", **fw)
    return out if hooks.capture else (out, None)


def _stack_caches(cfg: Config, cache) -> list:
    """[(rename, ActivationCache)]: a decoder's cache, or an encoder-decoder's two stack caches,
    each with the map from its own hook names to the caller's."""
    if cfg.cross_attention:
        return [(functools.partial(from_stack, s), getattr(cache, s)) for s in STACKS]
    return [(lambda name: name, cache)]


def _forward_fn(cfg: Config, metric: Metric, metric_on: str, fw: dict, capture=None):
    """`(metric(forward(...)), captured ActivationCache or None)` as a function of
    (params, tokens, deltas, patch); `capture` selects hooks to return besides the metric."""
    if metric_on not in ("logits", "cache"):
        raise ValueError(f"metric_on must be 'logits' or 'cache', got {metric_on!r}")
    capture = True if metric_on == "cache" else capture

    def run(params, tokens, deltas, patch=None):
        logits, cache = _forward(params, tokens, cfg,
                                 Hooks(capture=capture, add=deltas, patch=patch or {}), fw)
        return metric(cache if metric_on == "cache" else logits), cache
    return run


def zero_deltas(params, cfg: Config, tokens, names: Sequence[str], **fw):
    """Zero `add` deltas for concrete hook `names`: `blocks.*.<template>` -> [n_layers, *act]
    (one per template, however many layers are asked for), outer hooks -> [*act]."""
    def shapes(p, t):
        return _forward(p, t, cfg, Hooks(capture=tuple(names)), fw)[1]

    cache = jax.eval_shape(shapes, params, tokens)
    deltas = {}
    for rename, part in _stack_caches(cfg, cache):
        deltas.update({rename(f"blocks.*.{t}"): jnp.zeros((cfg.n_layers,) + a.shape[1:], a.dtype)
                       for t, a in part.stacked.items()})
        deltas.update({rename(k): jnp.zeros(a.shape, a.dtype) for k, a in part.outer.items()})
    # integer activations (a mixture's mlp.hook_expert_indices) have no gradient: leave them out
    ints = [k for k, d in deltas.items() if not jnp.issubdtype(d.dtype, jnp.inexact)]
    if ints:
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, k) for k in ints)]
        if not names:
            raise ValueError("the selected hooks are all integer-valued (routing indices), which "
                             "have no gradient; select floating-point activations")
        return zero_deltas(params, cfg, tokens, names, **fw)
    return deltas, cache


def _as_cache(cfg: Config, grads: dict, like):
    """Gradients of the zero deltas, arranged like the activation cache `like`."""
    def arrange(rename, part: ActivationCache) -> ActivationCache:
        stacked = {t: grads[rename(f"blocks.*.{t}")][jnp.asarray(part._held(t))]
                   for t in part.stacked}
        return dataclasses.replace(part, stacked=stacked,
                                   outer={k: grads[rename(k)] for k in part.outer})

    parts = [arrange(*p) for p in _stack_caches(cfg, like)]
    if cfg.cross_attention:
        return dataclasses.replace(like, **dict(zip(STACKS, parts)))
    return parts[0]


def _value_and_grads(params, cfg: Config, tokens, metric: Metric, names_filter, metric_on: str,
                     fw: dict, keep_activations: bool):
    names = catalogue(cfg).select(names_filter)
    if not names:
        raise ValueError(f"names_filter {names_filter!r} selects no hooks")
    deltas, like = zero_deltas(params, cfg, tokens, names, **fw)
    run = _forward_fn(cfg, metric, metric_on, fw, capture=tuple(names) if keep_activations else None)
    (value, acts), grads = jax.value_and_grad(lambda d: run(params, tokens, d), has_aux=True)(deltas)
    return value, acts, _as_cache(cfg, grads, like)


@model_or_params
def grad_cache(params, cfg: Config, tokens, metric: Metric, names_filter: Any = True, *,
               metric_on: str = "logits", **forward_kwargs):
    """`(metric value, ActivationCache of d metric / d activation)` for every hook selected by
    `names_filter` (same selection rules as `run_with_cache`), from one backward pass.

    metric: logits [batch, pos, d_vocab] -> scalar, or with `metric_on="cache"` the forward's
    ActivationCache (every hook) -> scalar. Pure and jit-able (cfg static).
    """
    value, _, grads = _value_and_grads(params, cfg, tokens, metric, names_filter, metric_on,
                                       forward_kwargs, keep_activations=False)
    return value, grads


@model_or_params
def activations_and_grads(params, cfg: Config, tokens, metric: Metric, names_filter: Any = True,
                          **forward_kwargs):
    """`(metric value, ActivationCache of the activations, ActivationCache of d metric / d
    activation)` for the hooks selected by `names_filter`, from one forward and one backward.
    metric: logits [batch, pos, d_vocab] -> scalar."""
    return _value_and_grads(params, cfg, tokens, metric, names_filter, "logits", forward_kwargs,
                            keep_activations=True)


@model_or_params
def grad_wrt(params, cfg: Config, tokens, metric: Metric, names, *, metric_on: str = "logits",
             **forward_kwargs) -> dict:
    """`{hook name: d metric / d activation}` (each the activation's shape) from one backward
    pass; called as `grad_wrt(model, tokens_or_text, metric, names)` or with `(params, cfg, ...)`."""
    names = catalogue(cfg).select(names)
    _, cache = grad_cache(params, cfg, jnp.asarray(tokens), metric, names, metric_on=metric_on,
                          **forward_kwargs)
    return {n: cache[n] for n in names}


@model_or_params
def grad_times_activation(params, cfg: Config, tokens, metric: Metric, names_filter: Any = True,
                          **forward_kwargs) -> dict:
    """First-order attribution `sum_last_axis(grad * act)` per hook: each activation's
    contribution to the metric to first order (zeroing it changes the metric by about minus
    this). `{name: [*act_shape[:-1]]}`."""
    _, acts, grads = activations_and_grads(params, cfg, tokens, metric, names_filter,
                                           **forward_kwargs)
    return {n: (grads[n] * acts[n]).sum(-1) for n in catalogue(cfg).select(names_filter)}


@model_or_params
def integrated_gradients(params, cfg: Config, tokens, metric: Metric, name: str, baseline,
                         target, steps: int = 32, **forward_kwargs) -> jax.Array:
    """Integrated gradients of `metric` along the straight path from `baseline` to `target`
    activations at hook `name` (the activation is patched to each path point):
    `(target - baseline) * mean_alpha grad(baseline + alpha (target - baseline))`, midpoint rule
    over `steps` points. Its sum approximates metric(target) - metric(baseline)."""
    full = catalogue(cfg).one(name, "integrated_gradients")
    baseline, target = jnp.asarray(baseline), jnp.asarray(target)
    if baseline.shape != target.shape:
        raise ValueError(f"baseline {baseline.shape} and target {target.shape} must have one shape")
    run = _forward_fn(cfg, metric, "logits", forward_kwargs)

    def grad_at(alpha):
        point = baseline + alpha * (target - baseline)

        def f(delta):
            return run(params, tokens, {full: delta}, {full: (point, None)})[0]
        return jax.grad(f)(jnp.zeros_like(point))

    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
    return (target - baseline) * jax.vmap(grad_at)(alphas).mean(0)
