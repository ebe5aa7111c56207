"""TransformerLens state dicts and configs -> jtlens, for users moving a trained model over.

`params_from_state_dict(model.state_dict(), cfg)` takes a HookedTransformer's (numpy-converted)
state dict; `config_from_tl(model.cfg)` its HookedTransformerConfig.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np

from jtlens.io.conversions.common import TensorReader, check_and_cast
from jtlens.core.config import Config, config_from_tl  # noqa: F401  (its public path)
from jtlens.core.params import param_shapes

EXPERT_WEIGHTS = {"W_gate": "b_gate", "W_in": "b_in", "W_out": "b_out"}  # an expert's weights, biases


def params_from_state_dict(state_dict: Mapping[str, Any], cfg: Config) -> dict:
    """Layer-stacked jtlens params from a TransformerLens state dict (strict)."""
    # Copies: jax may alias a numpy buffer, and torch's .numpy() shares the tensor's memory, so
    # without one an in-place edit of the torch model would change the "immutable" jax params.
    tensors = {k: np.array(v.detach().float().numpy() if hasattr(v, "detach") else v, copy=True)
               for k, v in state_dict.items()}
    r = TensorReader(tensors, "TransformerLens state dict")
    r.ignore("*.attn.IGNORE", "*.attn.mask", "*.attn.rotary_sin", "*.attn.rotary_cos")
    if not cfg.learned_positions:
        r.ignore("pos_embed.W_pos")  # TransformerLens keeps an unused table for rotary/ALiBi models
    shapes = param_shapes(cfg)

    def moe(prefix):
        """TransformerLens's MoE: the router `mlp.W_gate` and an nn.Linear ([out, in]) per expert."""
        stack = lambda n, kind: np.stack([  # noqa: E731
            r.take(f"{prefix}experts.{e}.{n}.{kind}") for e in range(cfg.num_experts)])
        out = {"W_router": r.take(f"{prefix}W_gate.weight").T,
               "experts": {n: stack(n, "weight").transpose(0, 2, 1) for n in EXPERT_WEIGHTS}}
        if cfg.moe_biases:
            out["b_router"] = r.take(f"{prefix}W_gate.bias")
            out["experts"].update({b: stack(n, "bias") for n, b in EXPERT_WEIGHTS.items()})
        if cfg.shared_expert_d_mlp:  # (flat_state_dict's names: TransformerLens has none)
            out["shared_expert"] = {n: r.take(f"{prefix}shared_expert.{n}.weight").T
                                    for n in EXPERT_WEIGHTS}
            out["W_shared_expert_gate"] = r.take(f"{prefix}shared_expert_gate.weight").T
        return out

    def sub(prefix, tree):
        out = {}
        for k, v in tree.items():
            if k == "mlp" and cfg.num_experts:
                out[k] = moe(f"{prefix}mlp.")
            elif isinstance(v, dict):
                out[k] = sub(f"{prefix}{k}.", v)
            else:
                name = f"{prefix}{k}"
                if name not in r and f"{prefix}_{k}" in r:  # GQA keeps unexpanded _W_K/_W_V
                    name = f"{prefix}_{k}"
                out[k] = r.take(name)
        return out

    block_shapes = shapes.pop("blocks")
    params = {k: sub(f"{k}.", v) for k, v in shapes.items()}
    if cfg.n_layers:
        params["blocks"] = r.stack_layers(cfg.n_layers, lambda l: sub(f"blocks.{l}.", block_shapes))
    else:  # a zero-layer model (embed -> unembed): empty stacks of the block params
        params["blocks"] = jax.tree_util.tree_map(np.zeros, block_shapes,
                                                  is_leaf=lambda x: isinstance(x, tuple))
    r.finish()
    return check_and_cast(params, cfg)


def flat_state_dict(params: dict, cfg) -> dict[str, Any]:
    """Layer-stacked params -> {TransformerLens name: array}: `blocks.0.attn.W_Q` [n_heads,
    d_model, d_head], GQA keys/values as TransformerLens stores them (`_W_K`, `_b_V`), MoE
    layers as its nn.Linear weights (`mlp.W_gate.weight` the router [n_experts, d_model],
    `mlp.experts.3.W_in.weight` [d_mlp, d_model]; a shared expert as `mlp.shared_expert.W_in.weight`
    and `mlp.shared_expert_gate.weight` [1, d_model])."""
    gqa = cfg.n_kv_heads != cfg.n_heads
    out: dict[str, Any] = {}

    def put(prefix: str, tree: dict, layer: Optional[int]):
        for k, v in tree.items():
            if k == "mlp" and cfg.num_experts:  # TransformerLens's MoE names and [out, in] layout
                out[f"{prefix}mlp.W_gate.weight"] = v["W_router"][layer].T
                if cfg.moe_biases:
                    out[f"{prefix}mlp.W_gate.bias"] = v["b_router"][layer]
                for n, b in EXPERT_WEIGHTS.items():
                    for e in range(cfg.num_experts):
                        out[f"{prefix}mlp.experts.{e}.{n}.weight"] = v["experts"][n][layer][e].T
                        if cfg.moe_biases:
                            out[f"{prefix}mlp.experts.{e}.{n}.bias"] = v["experts"][b][layer][e]
                if cfg.shared_expert_d_mlp:  # as nn.Linear weights too (Qwen2-MoE's layout)
                    for n in EXPERT_WEIGHTS:
                        out[f"{prefix}mlp.shared_expert.{n}.weight"] = v["shared_expert"][n][layer].T
                    out[f"{prefix}mlp.shared_expert_gate.weight"] = v["W_shared_expert_gate"][layer].T
                continue
            if isinstance(v, dict):
                put(f"{prefix}{k}.", v, layer)
                continue
            key = f"_{k}" if gqa and k in ("W_K", "W_V", "b_K", "b_V") else k
            out[f"{prefix}{key}"] = v if layer is None else v[layer]

    # TransformerLens's order (its modules'): embeddings, the blocks, then the final norm and
    # the unembedding, whatever order the checkpoint's params came in
    order = list(param_shapes(cfg))
    for k in sorted(params, key=lambda k: order.index(k) if k in order else len(order)):
        if k != "blocks":
            put(f"{k}.", params[k], None)
            continue
        for l in range(cfg.n_layers):
            put(f"blocks.{l}.", params["blocks"], l)
    return out
