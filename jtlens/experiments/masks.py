"""Differentiable component masks: attention heads, neurons or any per-component activation
scaled by a continuous mask, so `jax.grad` gives each component's attribution and optax can
learn which components a behaviour needs.

At a masked hook the activation becomes `reference + m * (act - reference)`: `m = 1` is the
unchanged model, `m = 0` ablates the component to `reference` (zero unless given, e.g. the
mean activation over a dataset). One mask entry per component:

    hook_z / hook_q / hook_k / hook_v / hook_result [batch, pos, head, d] -> mask [n_layers, head]
    mlp.hook_post [batch, pos, d_mlp] -> mask [n_layers, d_mlp]   (one entry per neuron)

    value, g = mask_gradients(params, cfg, tokens, metric, ["z", "post"])
    probs, history = learn_mask(params, cfg, tokens, metric, ["z"], sparsity=0.05)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jtlens.core.config import Config
from jtlens.experiments.grads import Metric, zero_deltas
from jtlens.core.hooks import ALL_LAYERS, Hooks
from jtlens.core.forward import forward
from jtlens.core.hook_catalogue import hook_catalogue

# Hooks laid out [batch, head, query, key]: a per-head mask there needs another broadcast rule.
_NOT_POSITION_MAJOR = ("attn.hook_pattern", "attn.hook_attn_scores")


def _template(name: str, cfg: Config) -> str:
    template, layer = hook_catalogue(cfg).resolve(name)
    if layer != ALL_LAYERS:
        raise ValueError(f"masks cover every layer: use a template such as 'blocks.*.{template}' "
                         f"or {template.split('.')[-1].removeprefix('hook_')!r}, not {name!r}")
    if template in _NOT_POSITION_MAJOR:
        raise ValueError(f"{template} is not laid out [batch, pos, ...]; mask heads at "
                         f"'attn.hook_z' (same effect on the output) instead")
    return template


def _component_shape(act_shape: tuple) -> tuple:
    """[n_layers, batch, pos, *rest] -> [n_layers, *component]: heads for [.., head, d]
    activations, the last axis (neurons, residual dims) otherwise."""
    rest = act_shape[3:]
    return (act_shape[0],) + (rest[:-1] if len(rest) >= 2 else rest)


def full_masks(params, cfg: Config, tokens, names: Sequence[str], **forward_kwargs) -> dict:
    """All-ones masks (the unchanged model), `{"blocks.*.<template>": [n_layers, *component]}`."""
    keys = [f"blocks.*.{_template(n, cfg)}" for n in names]
    deltas, _ = zero_deltas(params, cfg, tokens, keys, **forward_kwargs)
    return {k: jnp.ones(_component_shape(deltas[k].shape), jnp.float32) for k in keys}


def _mask_fn(mask, reference, n_layers: int):
    def apply(act, hook):
        want = _component_shape((n_layers,) + act.shape)
        if mask.shape != want:
            raise ValueError(f"mask for {hook.name} has shape {tuple(mask.shape)}; it needs "
                             f"[n_layers, *component] = {want}")
        m = mask[hook.layer()]
        m = m.reshape(m.shape + (1,) * (act.ndim - 2 - m.ndim))  # [head] -> [head, 1] for z
        ref = 0.0 if reference is None else jnp.asarray(reference)[hook.layer()]
        return ref + m * (act - ref)
    return apply


def masked_metric(params, cfg: Config, tokens, metric: Metric, masks: Mapping[str, Any],
                  reference: Optional[Mapping[str, Any]] = None, **forward_kwargs) -> jax.Array:
    """metric(logits) with each hook in `masks` scaled per component (see the module doc).

    masks: hook -> [n_layers, *component]. reference: hook -> the ablation value, broadcastable
    to [n_layers, batch, pos, ...] (default zero). Differentiable in masks; jit-able (cfg static).
    """
    reference = dict(reference or {})
    fns = {}
    for name, mask in masks.items():
        key = f"blocks.*.{_template(name, cfg)}"
        ref = reference.pop(name, reference.pop(key, None))
        fns[key] = _mask_fn(jnp.asarray(mask), ref, cfg.n_layers)
    if reference:
        raise ValueError(f"reference given for unmasked hooks {sorted(reference)}; "
                         f"masks are at {sorted(fns)}")
    logits = forward(params, tokens, cfg, Hooks(fns=fns), return_type="logits", **forward_kwargs)
    return metric(logits)


def mask_gradients(params, cfg: Config, tokens, metric: Metric, names: Sequence[str],
                   reference: Optional[Mapping[str, Any]] = None, **forward_kwargs):
    """`(metric, {hook: d metric / d mask at 1})`, each [n_layers, *component]: the first-order
    change from ablating each component to its reference, `sum (act - reference) * grad` over
    its batch, positions and width."""
    masks = full_masks(params, cfg, tokens, names, **forward_kwargs)
    return jax.value_and_grad(lambda m: masked_metric(params, cfg, tokens, metric, m, reference,
                                                      **forward_kwargs))(masks)


def learn_mask(params, cfg: Config, tokens, metric: Metric, names: Sequence[str], *,
               reference: Optional[Mapping[str, Any]] = None, sparsity: float = 0.05,
               steps: int = 200, learning_rate: float = 0.1, final_temperature: float = 0.05,
               optimizer: Any = None,
               progress: bool = False, **forward_kwargs):
    """Learn the fewest components that keep `metric` at the full model's value.

    Minimises `(metric(masked) - metric(full))**2 + sparsity * mean(mask)` over
    `mask = sigmoid(logits / temperature)` with optax (Adam by default); the temperature anneals
    geometrically from 1 to `final_temperature` so the mask ends (nearly) binary instead of
    settling on fractional scalings. Returns (masks in [0, 1] `{hook: [n_layers, *component]}`,
    history `{"metric": [steps], "density": [steps]}`); threshold at 0.5 for a circuit.
    """
    import optax

    start = full_masks(params, cfg, tokens, names, **forward_kwargs)
    target = masked_metric(params, cfg, tokens, metric, start, reference, **forward_kwargs)
    n = sum(m.size for m in start.values())

    def loss(logit_masks, temperature):
        m = jax.tree.map(lambda x: jax.nn.sigmoid(x / temperature), logit_masks)
        value = masked_metric(params, cfg, tokens, metric, m, reference, **forward_kwargs)
        density = sum(x.sum() for x in m.values()) / n
        return (value - target) ** 2 + sparsity * density, (value, density)

    opt = optimizer or optax.adam(learning_rate)

    @jax.jit
    def step(theta, state, temperature):
        (_, aux), g = jax.value_and_grad(loss, has_aux=True)(theta, temperature)
        updates, state = opt.update(g, state, theta)
        return optax.apply_updates(theta, updates), state, aux

    theta = jax.tree.map(lambda m: jnp.full_like(m, 3.0), start)  # sigmoid(3) ~ 0.95: near the model
    state, values, densities = opt.init(theta), [], []
    temperatures = final_temperature ** (jnp.arange(steps) / max(steps - 1, 1))
    for t in tqdm(temperatures, desc="mask", disable=not progress):
        theta, state, (value, density) = step(theta, state, t)
        values.append(value)
        densities.append(density)
    masks = jax.tree.map(lambda x: jax.nn.sigmoid(x / final_temperature), theta)
    return masks, {"metric": jnp.stack(values), "density": jnp.stack(densities)}
