"""TransformerLens 3.x's `ProcessWeights` static API: a flat state dict with TransformerLens's
names (`blocks.0.attn.W_Q` [n_heads, d_model, d_head], torch tensors or arrays) and a config in,
the processed state dict out, computed by jtlens's weight functions (`jtlens.weights`).

    from jtlens.tl.weight_processing import ProcessWeights
    sd = ProcessWeights.process_weights(model.state_dict(), model.cfg)

The state dict must be complete for the config (conversion is strict), and the config may be a
jtlens Config or a TransformerLens one (d_vocab is read off `embed.W_E` when it leaves it unset).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jtlens.core import weights as W
from jtlens.core.config import Config
from jtlens.io.conversions.transformer_lens import (config_from_tl, flat_state_dict,
                                                   params_from_state_dict)


def _config(cfg: Any, state_dict: dict) -> Config:
    """A jtlens Config for `state_dict` from a jtlens or TransformerLens config."""
    if isinstance(cfg, Config):
        return cfg
    fields = dict(cfg) if isinstance(cfg, dict) else dict(vars(cfg))
    if fields.get("d_vocab", -1) in (-1, None) and "embed.W_E" in state_dict:
        fields["d_vocab"] = int(np.shape(state_dict["embed.W_E"])[0])
    return config_from_tl(fields)


def on_flat(state_dict: dict, cfg: Any, step: Callable[[dict, Config], dict]) -> dict:
    """`step(params, cfg)` (a `jtlens.weights` function) applied to a flat state dict."""
    cfg = _config(cfg, state_dict)
    params = jax.tree_util.tree_map(lambda a: np.array(a, np.float32),
                                    params_from_state_dict(state_dict, cfg))
    return flat_state_dict(step(params, cfg), cfg)


class ProcessWeights:
    """TransformerLens's weight-processing steps on state dicts (static methods)."""

    @staticmethod
    def fold_layer_norm(state_dict: dict, cfg: Any, fold_biases: bool = True,
                        center_weights: bool = True) -> dict:
        """The norms folded into the weights that read them (the norm weights dropped).

        A LayerNorm's bias is folded and its readers centred together (either alone changes the
        model's outputs); an RMSNorm has neither, so both flags (TransformerLens asks for False
        there) are moot."""
        cfg = _config(cfg, state_dict)
        if (cfg.normalization_type or "").startswith("LN") and not (fold_biases and center_weights):
            raise ValueError("fold_layer_norm: jtlens folds biases and centres LayerNorm readers "
                             "together (either alone changes the model's outputs)")
        return on_flat(state_dict, cfg, W.fold_layer_norm)

    @staticmethod
    def center_writing_weights(state_dict: dict, cfg: Any) -> dict:
        """Every weight writing to the residual stream made mean-zero over d_model."""
        return on_flat(state_dict, cfg, W.center_writing)

    @staticmethod
    def center_unembed(state_dict: dict) -> dict:
        """W_U and b_U made mean-zero over the vocabulary (softmax is shift-invariant); the other
        entries are returned as they are."""
        unembed = {"W_U": np.array(state_dict["unembed.W_U"], np.float32),
                   "b_U": np.array(state_dict["unembed.b_U"], np.float32)}
        centered = W.center_unembedding({"unembed": unembed})["unembed"]
        return {**state_dict, "unembed.W_U": centered["W_U"], "unembed.b_U": centered["b_U"]}

    @staticmethod
    def fold_value_biases(state_dict: dict, cfg: Any) -> dict:
        """b_V folded into b_O (the pattern rows sum to one)."""
        return on_flat(state_dict, cfg, W.fold_value_bias)

    @staticmethod
    def refactor_factored_attn_matrices(state_dict: dict, cfg: Any) -> dict:
        """W_Q W_K^T and W_V W_O re-factored to balanced factors (same products)."""
        return on_flat(state_dict, cfg, W.refactor_attn)

    @staticmethod
    def process_weights(state_dict: dict, cfg: Any, fold_ln: bool = True,
                        center_writing_weights: bool = True, center_unembed: bool = True,
                        fold_value_biases: bool = True,
                        refactor_factored_attn_matrices: bool = False) -> dict:
        """The steps turned on, in TransformerLens's order (see `jtlens.weights.process`)."""
        flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                     center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                     refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        return on_flat(state_dict, cfg, lambda p, c: W.process(p, c, **flags))
