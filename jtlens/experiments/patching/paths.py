"""Path patching: a sender head's effect along the paths into chosen receivers only.

For each sender head (layer, head), two runs on the corrupted prompt:
1. the sender's `hook_z` takes its clean value while every other head's `hook_z` (and any other
   `freeze` activation) is held at its corrupted value; the receivers' activations are recorded;
2. a corrupted run with just the receivers set to those recorded values; the metric is read.

So the result measures what the sender changes *through* the receivers, not through other heads
(Wang et al. 2022, "Interpretability in the Wild"). Every sender runs in one vmapped program,
grouped by sender layer so both runs start at the earliest layer that can change.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.hooks import Hooks
from jtlens.core.forward import context
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.core.pieces import run_blocks
from jtlens.experiments.patching import planning as P
from jtlens.experiments.patching import sweep as S

_HEAD_AXIS = {"attn.hook_q": 2, "attn.hook_k": 2, "attn.hook_v": 2, "attn.hook_z": 2,
              "attn.hook_result": 2, "hook_q_input": 2, "hook_k_input": 2, "hook_v_input": 2,
              "hook_attn_in": 2, "attn.hook_pattern": 1, "attn.hook_attn_scores": 1}


def receiver_masks(cfg: Config, receivers: Sequence, shapes: dict) -> dict:
    """{template: bool mask [n_layers, 1, ...]} marking each receiver (layer[, head]).

    receivers: hook names with a layer, or (name, head) pairs; `shapes` maps template to the
    stacked activation's shape.
    """
    masks: dict = {}
    for r in receivers:
        name, head = (r if isinstance(r, tuple) and len(r) == 2 and not isinstance(r[1], str)
                      else (r, None))
        template, layer = hook_catalogue(cfg).resolve(name)
        if not isinstance(layer, int):
            raise ValueError(f"receiver {name!r} needs a layer, e.g. 'blocks.2.attn.hook_q'")
        shape = shapes[template]
        mask = masks.setdefault(template, np.zeros((shape[0],) + (1,) * (len(shape) - 1), bool))
        if head is None:
            mask[layer] = True
            continue
        if template not in _HEAD_AXIS:
            raise ValueError(f"receiver {name!r} has no head axis; give it without a head")
        axis = 1 + _HEAD_AXIS[template]
        if mask.shape[axis] == 1:
            mask = masks[template] = np.repeat(mask, shape[axis], axis)
        if not 0 <= head < shape[axis]:
            raise ValueError(f"receiver head {head} is out of range for {name!r} ({shape[axis]} heads)")
        index = [layer] + [0] * (len(shape) - 1)
        index[axis] = head
        mask[tuple(index)] = True
    return masks


@functools.partial(jax.jit, static_argnames=("cfg", "metric", "templates", "freeze", "first",
                                             "logit_positions", "expand_to"))
def _path_chunk(params, corrupted, clean_z, masks, layer, idx, *, cfg, metric, templates, freeze,
                first, logit_positions, expand_to):
    L, H = cfg.n_layers, cfg.n_heads
    batch, n_pos = corrupted["hook_resid_pre"].shape[1:3]
    names = tuple(f"blocks.*.{t}" for t in templates)

    def one(index):
        sender = ((jnp.arange(L) == index[0])[:, None, None, None, None]
                  & (jnp.arange(H) == index[1])[None, None, None, :, None])
        patch = {f"blocks.*.{t}": (corrupted[t], None) for t in freeze}
        patch["blocks.*.attn.hook_z"] = (jnp.where(sender, clean_z, corrupted["attn.hook_z"]), None)
        ctx = context(cfg, Hooks(patch=patch, capture=names), batch, n_pos)
        resid = jax.lax.dynamic_index_in_dim(corrupted["hook_resid_pre"], layer, keepdims=False)
        _, seen = run_blocks(params["blocks"], resid, ctx, start_layer=layer)
        ran = lambda x: (jnp.arange(L) >= layer).reshape((L,) + (1,) * (x.ndim - 1))
        receive = {f"blocks.*.{t}": (jnp.where(ran(seen[t]), seen[t], corrupted[t]), masks[t])
                   for t in templates}
        logits = S.run_from_layer(params, corrupted["hook_resid_pre"], jnp.int32(first), cfg,
                                  Hooks(patch=receive), logit_positions)
        return S.scalar_metric(metric, logits, expand_to, logit_positions)

    return jax.vmap(one)(idx)


def path_patch(model, corrupted_tokens, clean_cache, patching_metric: Callable, receivers: Sequence,
               *, freeze: Sequence[str] = ("attn.hook_z",), chunk_size: Optional[int] = None,
               sharding=None, progress: bool = True):
    """Path patching from every sender head into `receivers`: [n_layers, n_heads].

    Args:
      model: a jtlens HookedTransformer.
      corrupted_tokens: int [batch, pos]; clean_cache: the clean run's ActivationCache.
      patching_metric: logits -> scalar (JAX).
      receivers: hook names with a layer (`"blocks.3.hook_resid_pre"`) or `(name, head)` pairs
        (`("blocks.3.attn.hook_q", 5)`); `f"blocks.{n_layers-1}.hook_resid_post"` gives the
        direct path to the logits.
      freeze: per-layer activations held at their corrupted values in the first run besides
        the other heads' `attn.hook_z` (add "hook_mlp_out" to block paths through MLPs).
    Returns: the metric for each sender (layer, head); senders at or after a receiver's layer
      leave it unchanged.
    """
    cfg = model.cfg
    tokens = P.corrupted_tokens(model, corrupted_tokens)
    freeze = tuple(hook_catalogue(cfg).resolve(f)[0] for f in freeze)
    templates = tuple(dict.fromkeys(hook_catalogue(cfg).resolve(
        r[0] if isinstance(r, tuple) and len(r) == 2 and not isinstance(r[1], str) else r)[0]
        for r in receivers))
    if not templates:
        raise ValueError("path_patch needs at least one receiver, e.g. 'blocks.1.hook_resid_pre'")
    needed = tuple(dict.fromkeys(("attn.hook_z",) + freeze + templates))
    corrupted = S.corrupted_residuals(model.params, tokens, cfg, extra=needed)
    masks = receiver_masks(cfg, receivers, {t: corrupted[t].shape for t in templates})
    first = min(int(np.nonzero(m.reshape(len(m), -1).any(1))[0].min()) for m in masks.values())
    clean_z = P.clean_activation(clean_cache, "attn.hook_z")
    S.check_clean_shape(model.params, cfg, tokens, "attn.hook_z", clean_z)
    p = P.plan(cfg, patching_metric, *tokens.shape, cfg.n_heads, chunk_size=chunk_size,
               sharding=sharding, runs_per_patch=2)
    fn = functools.partial(_path_chunk, model.params, corrupted, clean_z,
                           {t: jnp.asarray(m) for t, m in masks.items()}, cfg=cfg,
                           metric=patching_metric, templates=templates,
                           freeze=tuple(t for t in freeze if t != "attn.hook_z"), first=first,
                           logit_positions=p.logit_positions, expand_to=p.expand_to)
    rows = np.array(list(itertools.product(range(cfg.n_layers), range(cfg.n_heads))), np.int32)
    out = S.map_rows(fn, rows, p.chunk_size, sharding, progress, desc="path patching")
    return jnp.asarray(out.reshape(cfg.n_layers, cfg.n_heads))
