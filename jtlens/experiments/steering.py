"""Steering vectors: activation addition (ActAdd, Turner et al. 2023), the difference of a
model's activations on two prompts added at the start of any later prompt; and
`steering_vector`, a vector optimised with optax to raise a target token's log-prob.

    vector = prompt_difference(params, cfg, love_tokens, hate_tokens, "blocks.2.hook_resid_pre", coeff=5)
    logits = jtlens.forward(params, tokens, cfg, add_at_start(vector, "blocks.2.hook_resid_pre"))
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.experiments.grads import zero_deltas
from jtlens.core.hooks import Hooks
from jtlens.core.forward import forward, forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue


def prompt_difference(params, cfg: Config, plus_tokens, minus_tokens, name: str,
                      coeff: float = 1.0, **forward_kwargs) -> jax.Array:
    """`coeff * (act(plus) - act(minus))` at hook `name`: [n_prompt_tokens, *act_dims].

    plus_tokens, minus_tokens: [pos] or [1, pos] token ids of equal length (pad the shorter
    prompt, e.g. with spaces, as ActAdd does).
    """
    full = hook_catalogue(cfg).one(name, "prompt_difference")
    plus, minus = (jnp.asarray(t).reshape(1, -1) for t in (plus_tokens, minus_tokens))
    if plus.shape != minus.shape:
        raise ValueError(f"the two prompts have {plus.shape[1]} and {minus.shape[1]} tokens; pad "
                         f"the shorter one to the same length")
    _, cache = forward_with_cache(params, jnp.concatenate([plus, minus]), cfg,
                                  Hooks(capture=(full,)), return_type=None, **forward_kwargs)
    act = cache[full]
    return coeff * (act[0] - act[1])


def add_at_start(vector, name: str) -> Hooks:
    """Hooks that add `vector` [n, *act_dims] to the first n positions of the activation at
    `name` for every prompt in the batch (prompts at least n tokens long)."""
    vector = jnp.asarray(vector)

    def add(act, hook):
        if act.shape[1] < vector.shape[0]:
            raise ValueError(f"the steering vector covers {vector.shape[0]} positions but the "
                             f"prompt at {hook.name} has {act.shape[1]}; use a longer prompt")
        return act.at[:, :vector.shape[0]].add(vector.astype(act.dtype))

    return Hooks(fns={name: add})


def steering_vector(params, cfg: Config, tokens, name: str, target_token: int, *,
                    steps: int = 100, learning_rate: float = 0.05, position: int = -1,
                    l2: float = 1e-3, optimizer: Optional[Any] = None):
    """Optimise a vector added at hook `name` (every position) to raise the log-prob of
    `target_token` at `position`. Returns (vector [d], log-probs per step [steps])."""
    import optax

    full = hook_catalogue(cfg).one(name, "steering_vector")
    _, like = zero_deltas(params, cfg, tokens, [full])
    width = jax.tree_util.tree_leaves(like)[0].shape[-1]

    def loss(v):
        logits = forward(params, tokens, cfg, Hooks(add={full: v}), return_type="logits")
        logp = jax.nn.log_softmax(logits[:, position], -1)[:, target_token].mean()
        return -logp + l2 * jnp.sum(v * v), logp

    opt = optimizer or optax.adam(learning_rate)

    @jax.jit
    def step(v, state):
        (_, logp), g = jax.value_and_grad(loss, has_aux=True)(v)
        updates, state = opt.update(g, state, v)
        return optax.apply_updates(v, updates), state, logp

    v = jnp.zeros((width,), jnp.float32)
    state, history = opt.init(v), []
    for _ in range(steps):
        v, state, logp = step(v, state)
        history.append(logp)
    return v, jnp.stack(history)
