"""Feature-level experiments on a spliced SAE, each one compiled program.

    effects = feature_ablation_sweep(params, tokens, cfg, sae, metric)          # [n_features]
    effects = feature_patching_sweep(params, clean, corrupted, cfg, sae, metric,
                                     by_position=True)                          # [n_features, pos]
    grads, acts = feature_gradients(params, tokens, cfg, sae, metric)           # attribution
    hooks = steering_hooks(sae, feature=12, coefficient=8.0)                    # for generate

`metric(logits) -> scalar`. Sweeps patch `<hook>.hook_sae_acts_post` with a one-hot mask per
(feature[, position]) and `vmap` the spliced forward over the masks (in chunks of `batch_size`);
the SAE runs with its error term by default, so the unedited run is the model's own.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.hooks import Hooks
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.experiments.sparse.sae import SAE
from jtlens.experiments.sparse.splice import Attached, run_with_cache_with_saes, run_with_saes

Metric = Callable[[jax.Array], jax.Array]


def _hook(cfg: Config, sae: SAE, hook_name: Optional[str]) -> str:
    return hook_catalogue(cfg).one(hook_name or sae.cfg.metadata.hook_name, "an SAE's hook")


def feature_acts(params, tokens, cfg: Config, sae: SAE, hook_name: Optional[str] = None,
                 attention_mask=None) -> jax.Array:
    """The SAE's feature activations [batch, pos, d_sae] on `tokens` (hook_sae_acts_post)."""
    return _feature_acts(params, jnp.asarray(tokens), cfg, sae, _hook(cfg, sae, hook_name),
                         attention_mask)


@functools.partial(jax.jit, static_argnames=("cfg", "hook"))
def _feature_acts(params, tokens, cfg, sae, hook, attention_mask):
    name = f"{hook}.hook_sae_acts_post"
    _, cache = run_with_cache_with_saes(params, tokens, cfg, [Attached(sae, True, hook)],
                                        Hooks(capture=[name]), attention_mask=attention_mask)
    return cache[name]


def active_features(acts) -> np.ndarray:
    """Indices of the features that fire anywhere in `acts` [..., d_sae]."""
    return np.flatnonzero(np.asarray((jnp.asarray(acts) != 0).reshape(-1, acts.shape[-1]).any(0)))


def _masks(features, n_pos: int, d_sae: int, by_position: bool):
    """One boolean mask per sweep item: [n, 1, d_sae] (all positions) or [n * pos, pos, d_sae]."""
    onehot = jax.nn.one_hot(jnp.asarray(features), d_sae, dtype=jnp.bool_)      # [n, d_sae]
    if not by_position:
        return onehot[:, None, :]
    pos = jnp.eye(n_pos, dtype=jnp.bool_)                                       # [pos, pos]
    m = onehot[:, None, None, :] & pos[None, :, :, None]                        # [n, pos, pos, d_sae]
    return m.reshape(-1, n_pos, d_sae)


@functools.partial(jax.jit, static_argnames=("cfg", "hook", "metric", "use_error_term", "batch_size"))
def _sweep(params, tokens, cfg, sae, hook, metric, values, masks, use_error_term, batch_size):
    name = f"{hook}.hook_sae_acts_post"

    def one(mask):
        hooks = Hooks(patch={name: (values, mask[None])})
        return metric(run_with_saes(params, tokens, cfg, [Attached(sae, use_error_term, hook)], hooks))

    return jax.lax.map(one, masks, batch_size=batch_size)


def feature_ablation_sweep(params, tokens, cfg: Config, sae: SAE, metric: Metric, features=None,
                           by_position: bool = False, use_error_term: bool = True,
                           hook_name: Optional[str] = None, batch_size: int = 16) -> jax.Array:
    """metric with each feature zeroed (at every position, or `by_position` one position at a
    time): [n_features] or [n_features, pos]. features: indices (default: every feature active
    on `tokens`). One compiled program, vmapped in chunks of `batch_size`."""
    hook = _hook(cfg, sae, hook_name)
    if features is None:
        features = active_features(feature_acts(params, tokens, cfg, sae, hook))
    masks = _masks(features, tokens.shape[1], sae.cfg.d_sae, by_position)
    out = _sweep(params, jnp.asarray(tokens), cfg, sae, hook, metric, jnp.float32(0), masks,
                 use_error_term, batch_size)
    return out.reshape(len(features), -1) if by_position else out


def feature_patching_sweep(params, clean_tokens, corrupted_tokens, cfg: Config, sae: SAE,
                           metric: Metric, features=None, by_position: bool = False,
                           use_error_term: bool = True, hook_name: Optional[str] = None,
                           batch_size: int = 16) -> jax.Array:
    """metric on the corrupted run with each feature's clean activation patched in (at every
    position, or one position at a time): [n_features] or [n_features, pos]. features: default
    every feature active on either run. Tokens: [batch, pos], the same shape for both runs."""
    hook = _hook(cfg, sae, hook_name)
    if np.shape(clean_tokens) != np.shape(corrupted_tokens):
        raise ValueError(f"clean tokens {np.shape(clean_tokens)} and corrupted tokens "
                         f"{np.shape(corrupted_tokens)} must have the same [batch, pos] shape")
    clean = feature_acts(params, clean_tokens, cfg, sae, hook)
    if features is None:
        corrupted = feature_acts(params, corrupted_tokens, cfg, sae, hook)
        features = np.union1d(active_features(clean), active_features(corrupted))
    masks = _masks(features, clean.shape[1], sae.cfg.d_sae, by_position)
    out = _sweep(params, jnp.asarray(corrupted_tokens), cfg, sae, hook, metric, clean, masks,
                 use_error_term, batch_size)
    return out.reshape(len(features), -1) if by_position else out


def feature_gradients(params, tokens, cfg: Config, sae: SAE, metric: Metric,
                      use_error_term: bool = True, hook_name: Optional[str] = None):
    """(d metric / d feature activation, feature activations), both [batch, pos, d_sae], from
    one forward and one backward pass through the splice. Attribution patching estimates:
    ablating feature f at position p changes the metric by about `-grads * acts`; patching in
    clean activations by `grads * (clean_acts - acts)`."""
    hook = _hook(cfg, sae, hook_name)
    return _gradients(params, jnp.asarray(tokens), cfg, sae, hook, metric, use_error_term)


@functools.partial(jax.jit, static_argnames=("cfg", "hook", "metric", "use_error_term"))
def _gradients(params, tokens, cfg, sae, hook, metric, use_error_term):
    name = f"{hook}.hook_sae_acts_post"
    acts = _feature_acts(params, tokens, cfg, sae, hook, None)

    def f(delta):
        return metric(run_with_saes(params, tokens, cfg, [Attached(sae, use_error_term, hook)],
                                    Hooks(add={name: delta})))

    return jax.grad(f)(jnp.zeros_like(acts)), acts


def through_final_norm(W, params, cfg: Config) -> jax.Array:
    """Residual directions W [..., d_model] as ln_final passes them to the unembedding, its
    per-position scale aside: centred for LayerNorm, times ln_final's weight when it is not
    folded into W_U. The scale is positive, so it rescales but never reorders a row's logits."""
    if cfg.final_norm_type in ("LN", "LNPre"):
        W = W - W.mean(-1, keepdims=True)
    w = (params.get("ln_final") or {}).get("w")
    return W if w is None else W * w


def feature_logit_weights(sae: SAE, params, cfg: Config, features=None) -> jax.Array:
    """Each feature's decoder direction through ln_final and the unembedding,
    W_dec[features] @ W_U: [n_features (default d_sae), d_vocab]; the top and bottom entries
    of a row are the tokens the feature boosts and suppresses (SAELens dashboards' logit
    tables). Residual-stream SAEs; exact per-position effects: `feature_dla`."""
    W_dec = sae.W_dec if features is None else sae.W_dec[jnp.asarray(features)]
    return through_final_norm(W_dec, params, cfg) @ params["unembed"]["W_U"]


def feature_dla(sae: SAE, acts, params, cfg: Config, scale, direction) -> jax.Array:
    """Direct logit attribution of each feature: its contribution, acts * W_dec, to the final
    residual, through ln_final (`through_final_norm`, divided by its `scale` [batch, pos, 1]
    from the cache) and read out along `direction` [d_vocab] (a logit difference) or W_U
    columns: [batch, pos, d_sae]. Residual-stream SAEs."""
    # W_U @ direction first: [d_sae, d_vocab] is too big to form for a large SAE and vocabulary
    W_U = params["unembed"]["W_U"]
    readout = through_final_norm(sae.W_dec, params, cfg) @ (W_U @ jnp.asarray(direction))
    return jnp.asarray(acts) * readout / scale


def steering_hooks(sae: SAE, feature: int, coefficient: float, hook_name: Optional[str] = None,
                   hooks: Optional[Hooks] = None) -> Hooks:
    """Hooks that add `coefficient * W_dec[feature]` at the SAE's hook (SAELens's steering);
    pass them to `generate(..., hooks=...)` or any forward. Extends `hooks` if given."""
    name = hook_name or sae.cfg.metadata.hook_name
    vec = coefficient * sae.W_dec[feature]
    if sae.cfg.reshape_activations == "hook_z":
        raise ValueError("steering a hook_z SAE needs the per-head shape: add "
                         "coefficient * W_dec[f].reshape(n_heads, d_head) at the hook yourself")
    hooks = hooks or Hooks()
    add = dict(hooks.add)
    add[name] = add[name] + vec if name in add else vec
    return Hooks(capture=hooks.capture, patch=hooks.patch, add=add, fns=hooks.fns)
