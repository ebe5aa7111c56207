"""Activation addition (ActAdd, Turner et al. 2023): steer a model with the difference of its
activations on two prompts, added at the start of any later prompt. No optimisation; for a
vector optimised toward a target token see `jtlens.grads.steering_vector`.

    vector = prompt_difference(params, cfg, love_tokens, hate_tokens, "blocks.2.hook_resid_pre", coeff=5)
    logits = jtlens.forward(params, tokens, cfg, add_at_start(vector, "blocks.2.hook_resid_pre"))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jtlens.config import Config
from jtlens.grads import _one_hook
from jtlens.hooks import Hooks
from jtlens.model import forward


def prompt_difference(params, cfg: Config, plus_tokens, minus_tokens, name: str,
                      coeff: float = 1.0, **forward_kwargs) -> jax.Array:
    """`coeff * (act(plus) - act(minus))` at hook `name`: [n_prompt_tokens, *act_dims].

    plus_tokens, minus_tokens: [pos] or [1, pos] token ids of equal length (pad the shorter
    prompt, e.g. with spaces, as ActAdd does).
    """
    full = _one_hook(name, cfg, "prompt_difference")
    plus, minus = (jnp.asarray(t).reshape(1, -1) for t in (plus_tokens, minus_tokens))
    if plus.shape != minus.shape:
        raise ValueError(f"the two prompts have {plus.shape[1]} and {minus.shape[1]} tokens; pad "
                         f"the shorter one to the same length")
    _, cache = forward(params, jnp.concatenate([plus, minus]), cfg, Hooks(capture=(full,)),
                       return_type=None, **forward_kwargs)
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
