"""Attribution patching: every patch of a sweep estimated from one forward and one backward.

The metric after patching an activation slice from the clean run is approximated to first
order around the corrupted run:

    metric(patched) ~ metric(corrupted) + sum_slice (clean - corrupted) * d metric / d act

The gradient with respect to every activation comes from `jax.grad` of the metric with respect
to zero `add` deltas at those hook points, so all sweeps cost one forward and one backward.
Results have the shapes of the exact sweeps (and equal them when the model is linear in the
patched activation).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.experiments.grads import activations_and_grads
from jtlens.experiments.patching import planning as P
from jtlens.experiments.patching.sweep import Metric, scalar_metric, check_clean_shape


@functools.partial(jax.jit, static_argnames=("cfg", "metric", "templates"))
def _grads(params, tokens, *, cfg, metric, templates):
    """(metric of the corrupted run, its activations, d metric / d activation), per template,
    each [n_layers, batch, ...]."""
    value, acts, grads = activations_and_grads(params, cfg, tokens,
                                               functools.partial(scalar_metric, metric),
                                               [f"blocks.*.{t}" for t in templates])
    return (value, tuple(acts[f"blocks.*.{t}"] for t in templates),
            tuple(grads[f"blocks.*.{t}"] for t in templates))


def attribution_sweep(params, cfg: Config, corrupted_tokens, clean: dict, metric: Metric,
                      specs: Sequence[tuple[str, tuple]]) -> list[jax.Array]:
    """Linear estimates of patching sweeps.

    Args:
      clean: template -> the clean run's activation at every layer, [n_layers, batch, ...].
      metric: logits [batch, pos, d_vocab] -> scalar.
      specs: (template, axes) per sweep; `axes` are the activation axes ([batch, ...], so pos
        is 1) a patch index addresses after the layer, as in a setter's `.axes`.
    Returns: per spec, metric(corrupted) + the first-order change, [n_layers, *indexed dims].
    """
    templates = tuple(dict.fromkeys(t for t, _ in specs))
    tokens = jnp.asarray(corrupted_tokens)
    for t in templates:
        check_clean_shape(params, cfg, tokens, t, clean[t])
    value, acts, grads = _grads(params, tokens, cfg=cfg, metric=metric, templates=templates)
    out = []
    for template, axes in specs:
        k = templates.index(template)
        effect = (jnp.asarray(clean[template]) - acts[k]) * grads[k]  # [n_layers, batch, ...]
        keep = (0,) + tuple(1 + a for a in axes)
        summed = effect.sum(axis=tuple(i for i in range(effect.ndim) if i not in keep))
        order = sorted(keep)
        out.append(value + jnp.transpose(summed, [order.index(i) for i in keep]))
    return out


def attribution_patch(model, corrupted_tokens, clean_cache, patching_metric: Callable,
                      sweeps: Union[Callable, Sequence[Callable]]):
    """Attribution patching for TransformerLens-named sweeps, all from one forward + backward.

    Args:
      sweeps: one or more `jtlens.patching.get_act_patch_*` functions naming what to estimate,
        e.g. `get_act_patch_attn_head_out_all_pos` or `get_act_patch_attn_head_all_pos_every`.
    Returns: an array shaped like that sweep's result (or a list of them).
    """
    single = callable(sweeps)
    sweeps = [sweeps] if single else list(sweeps)
    groups = [getattr(fn, "parts", (fn,)) for fn in sweeps]
    specs = []
    for fn in (part for parts in groups for part in parts):
        if not hasattr(fn, "setter"):
            raise ValueError(f"{getattr(fn, '__name__', fn)!r} is not a jtlens get_act_patch_* "
                             f"function; pass e.g. jtlens.patching.get_act_patch_resid_pre")
        specs.append((P.per_layer_template(model.cfg, fn.activation_name), fn.setter.axes))
    clean = {t: P.clean_activation(clean_cache, t) for t, _ in specs}
    flat = iter(attribution_sweep(model.params, model.cfg, P.corrupted_tokens(model, corrupted_tokens),
                                  clean, patching_metric, specs))
    out = []
    for fn, parts in zip(sweeps, groups):
        results = [next(flat) for _ in parts]
        out.append(fn.combine(model.cfg, results) if hasattr(fn, "parts") else results[0])
    return out[0] if single else out
