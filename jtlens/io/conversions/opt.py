"""OPT (OPTForCausalLM) -> jtlens. OPT's learned positions start at row 2 of its table."""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import (ConversionError, TensorReader, attention_linears,
                                       head_dim, mlp_linears, norm)
from jtlens.core.config import Config

POSITION_OFFSET = 2


def config_from_hf(hf: dict) -> Config:
    """An OPTConfig dict -> Config (pre-LN variants only)."""
    if not hf.get("do_layer_norm_before", True):
        raise ConversionError("OPT with do_layer_norm_before=False (post-LN, e.g. opt-350m) is not "
                              "supported")
    if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        raise ConversionError("OPT with word_embed_proj_dim != hidden_size (projected embeddings) "
                              "is not supported")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return Config(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads,
        d_head=head_dim(d_model, n_heads), d_mlp=hf["ffn_dim"], n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"], act_fn=hf.get("activation_function", "relu"), eps=1e-5,
        normalization_type="LN", original_architecture="OPTForCausalLM",
        model_name=hf.get("_name_or_path") or "opt")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """OPT checkpoint tensors -> jtlens params."""
    pre = "model.decoder"

    def layer(l):
        b = f"{pre}.layers.{l}"
        names = {k: f"{b}.self_attn.{k}_proj" for k in "qkv"} | {"o": f"{b}.self_attn.out_proj"}
        return {"attn": attention_linears(r, names, cfg.n_heads, cfg.d_head, cfg.d_model),
                "mlp": mlp_linears(r, f"{b}.fc1", f"{b}.fc2"),
                "ln1": norm(r, f"{b}.self_attn_layer_norm"), "ln2": norm(r, f"{b}.final_layer_norm")}

    W_E = r.take(f"{pre}.embed_tokens.weight")
    return {"embed": {"W_E": W_E},
            "pos_embed": {"W_pos": r.take(f"{pre}.embed_positions.weight")[POSITION_OFFSET:]},
            "blocks": r.stack_layers(cfg.n_layers, layer), "ln_final": norm(r, f"{pre}.final_layer_norm"),
            "unembed": {"W_U": r.unembedding("lm_head.weight", W_E).T,
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
