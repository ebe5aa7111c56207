"""Mixture-of-experts MLP (Mixtral / OLMoE / GPT-OSS / Qwen2-MoE) with TransformerLens's MoE hooks.

Expert weights are stacked on a leading expert axis (`experts.W_gate`, `experts.W_in`:
[n_experts, d_model, d_mlp]; `experts.W_out`: [n_experts, d_mlp, d_model]; the router
`W_router`: [d_model, n_experts]; under Config.moe_biases also `b_router` [n_experts] and
`experts.b_gate` / `b_in` [n_experts, d_mlp], `experts.b_out` [n_experts, d_model]; under
Config.shared_expert_d_mlp a shared expert `shared_expert.W_gate` / `W_in` / `W_out` and its
gate `W_shared_expert_gate` [d_model, 1]), so an
expert ablation or patching sweep is one `vmap` over that axis, and the params shard over an
"expert" mesh axis. Two exact dispatch modes (Config.moe_dispatch): "dense" runs every expert
on every token and weights the outputs by the (mostly zero) routing weights; "gather" runs
each expert only on its routed tokens, padded to a fixed capacity.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jtlens.core import components as C


def route(p: dict, x, ctx):
    """Routing of tokens x [tokens, d_model] -> (weights, indices) [tokens, k].

    Fires mlp.hook_expert_weights ([tokens, n_experts]) and mlp.hook_expert_indices ([tokens,
    k]) as TransformerLens's MoE does: the weights are a softmax over all experts, or (under
    moe_softmax_after_topk, GPT-OSS) the softmax of the k chosen logits, zero elsewhere.
    """
    cfg = ctx.cfg
    logits = x @ p["W_router"] + p["b_router"] if cfg.moe_biases else x @ p["W_router"]
    logits = logits.astype(jnp.float32)
    if cfg.moe_softmax_after_topk:
        top, indices = jax.lax.top_k(logits, cfg.experts_per_token)
        rows = jnp.arange(x.shape[0])[:, None]
        probs = ctx("mlp.hook_expert_weights", jnp.zeros_like(logits).at[rows, indices].set(
            jax.nn.softmax(top, axis=-1)))
        weights = jnp.take_along_axis(probs, indices, axis=-1)
    else:
        probs = ctx("mlp.hook_expert_weights", jax.nn.softmax(logits, axis=-1))
        weights, indices = jax.lax.top_k(probs, cfg.experts_per_token)
    if cfg.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights.astype(x.dtype), ctx("mlp.hook_expert_indices", indices)


def gated(cfg):
    """An expert's gated activation (gate, up [..., d_mlp]) -> [..., d_mlp]."""
    if cfg.swiglu_limit is None:
        act = C.ACTIVATION_FNS[cfg.act_fn]
        return lambda gate, up: act(gate) * up
    limit, alpha = cfg.swiglu_limit, cfg.swiglu_alpha

    def clamped_swiglu(gate, up):  # GPT-OSS
        gate, up = jnp.minimum(gate, limit), jnp.clip(up, -limit, limit)
        return gate * jax.nn.sigmoid(alpha * gate) * (up + 1)
    return clamped_swiglu


def _expert(w: dict, x, act):
    """One expert (w: its weights, biases under moe_biases) on x [..., d_model] -> [..., d_model]."""
    bias = lambda name: w.get(name, 0)  # noqa: E731  (no biases: zero)
    h = act(x @ w["W_gate"] + bias("b_gate"), x @ w["W_in"] + bias("b_in"))
    return h @ w["W_out"] + bias("b_out")


def dense_dispatch(p: dict, x, weights, indices, act):
    """Every expert (p: the stacked expert weights) on every token, summed with its routing weight (zero if not routed)."""
    n_experts = p["W_in"].shape[0]
    # [tokens, n_experts]: each token's weight on each expert.
    per_expert = jnp.zeros((x.shape[0], n_experts), x.dtype).at[
        jnp.arange(x.shape[0])[:, None], indices].add(weights)
    outs = jax.vmap(_expert, in_axes=(0, None, None))(p, x, act)  # [n_experts, tokens, d_model]
    return jnp.einsum("te,etd->td", per_expert, outs)


def capacity(n_tokens: int, cfg) -> int:
    """Tokens each expert can take in gather mode: ceil(factor * tokens * k / n_experts)."""
    return min(n_tokens, math.ceil(cfg.moe_capacity_factor * n_tokens * cfg.experts_per_token
                                   / cfg.num_experts))


def gather_dispatch(p: dict, x, weights, indices, act, cap: int):
    """Each expert on at most `cap` gathered tokens; returns (out [tokens, d], overflow count).

    Tokens beyond an expert's capacity are dropped from that expert; the caller reports the
    overflow, so a result is only returned as exact when the count is zero.
    """
    n_tokens, n_experts = x.shape[0], p["W_in"].shape[0]
    routed = jnp.zeros((n_tokens, n_experts), bool).at[
        jnp.arange(n_tokens)[:, None], indices].set(True)  # [tokens, n_experts]
    per_expert = jnp.zeros((n_tokens, n_experts), x.dtype).at[
        jnp.arange(n_tokens)[:, None], indices].add(weights)
    # The routed tokens of each expert first (stable, in token order), then padding.
    order = jnp.argsort(~routed.T, axis=1, stable=True)[:, :cap]  # [n_experts, cap]
    valid = jnp.take_along_axis(routed.T, order, axis=1)
    gathered = x[order]  # [n_experts, cap, d_model]
    outs = jax.vmap(_expert, in_axes=(0, 0, None))(p, gathered, act)
    scale = jnp.where(valid, per_expert.T[jnp.arange(n_experts)[:, None], order], 0)
    out = jnp.zeros_like(x).at[order.reshape(-1)].add(
        (outs * scale[..., None]).reshape(-1, x.shape[-1]))
    return out, jnp.maximum(routed.sum(0) - cap, 0).sum()


def moe_mlp(p: dict, x, ctx):
    """The MoE MLP on x [batch, pos, d_model] -> [batch, pos, d_model]."""
    cfg = ctx.cfg
    act = gated(cfg)
    batch, pos, d_model = x.shape
    flat = x.reshape(-1, d_model)
    weights, indices = route(p, flat, ctx)
    if cfg.moe_dispatch == "dense":
        out = dense_dispatch(p["experts"], flat, weights, indices, act)
    else:
        out, overflow = gather_dispatch(p["experts"], flat, weights, indices, act, capacity(flat.shape[0], cfg))
        out = _checked(out, overflow)
    if cfg.shared_expert_d_mlp:
        out = out + shared_expert(p, flat, ctx)
    return out.reshape(batch, pos, d_model)


def shared_expert(p: dict, x, ctx):
    """Qwen2-MoE's shared expert on every token x [tokens, d_model] -> [tokens, d_model].

    Its hooks are named as TransformerLens names a routed expert's, over all tokens:
    mlp.shared_expert.hook_gate / hook_pre / hook_post [tokens, shared_expert_d_mlp], and
    mlp.hook_shared_expert_weight [tokens, 1], the sigmoid gate scaling its output.
    """
    w = p["shared_expert"]
    gate = ctx("mlp.shared_expert.hook_gate", x @ w["W_gate"])
    pre = ctx("mlp.shared_expert.hook_pre", x @ w["W_in"])
    post = ctx("mlp.shared_expert.hook_post", C.ACTIVATION_FNS[ctx.cfg.act_fn](gate) * pre)
    weight = ctx("mlp.hook_shared_expert_weight", jax.nn.sigmoid(x @ p["W_shared_expert_gate"]))
    return weight * (post @ w["W_out"])


def _checked(out, overflow):
    """out, or an error (at run time, under jit too) when some routed token overflowed."""
    def fail(n):
        if n:
            raise ValueError(f"MoE gather dispatch: {int(n)} routed token(s) exceeded the expert "
                             "capacity; raise Config.moe_capacity_factor or use moe_dispatch='dense'")
    jax.debug.callback(fail, overflow)
    return out
