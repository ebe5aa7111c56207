"""TransformerLens state dicts and configs -> jtlens, for users moving a trained model over.

`params_from_state_dict(model.state_dict(), cfg)` takes a HookedTransformer's (numpy-converted)
state dict; `config_from_tl(model.cfg)` its HookedTransformerConfig.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jtlens.io.conversions.common import TensorReader, check_and_cast
from jtlens.core.config import Config, config_from_tl  # noqa: F401  (its public path)
from jtlens.core.params import param_shapes


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

    def sub(prefix, tree):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out[k] = sub(f"{prefix}{k}.", v)
            else:
                name = f"{prefix}{k}"
                if name not in r and f"{prefix}_{k}" in r:  # GQA keeps unexpanded _W_K/_W_V
                    name = f"{prefix}_{k}"
                out[k] = r.take(name)
        return out

    block_shapes = shapes.pop("blocks")
    params = {k: sub(f"{k}.", v) for k, v in shapes.items()}
    params["blocks"] = r.stack_layers(cfg.n_layers, lambda l: sub(f"blocks.{l}.", block_shapes))
    r.finish()
    return check_and_cast(params, cfg)
