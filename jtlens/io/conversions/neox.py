"""GPT-NeoX / Pythia (GPTNeoXForCausalLM) -> jtlens.

NeoX fuses q, k, v into one projection whose rows are ordered (head, qkv, d_head).
"""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import (TensorReader, head_dim, mlp_linears, norm,
                                          per_head_fused_attention, rope)
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A GPTNeoXConfig dict -> Config (parallel attention + MLP, partial NeoX rotary)."""
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = head_dim(d_model, n_heads)
    pct = hf.get("rotary_pct", hf.get("partial_rotary_factor",
                 (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)))
    return Config(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=hf["intermediate_size"], n_ctx=hf["max_position_embeddings"], d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "gelu"), eps=hf.get("layer_norm_eps", 1e-5),
        normalization_type="LN", parallel_attn_mlp=hf.get("use_parallel_residual", True),
        positional_embedding_type="rotary", rotary_dim=round(pct * d_head),
        rotary_adjacent_pairs=False, default_prepend_bos=False,
        original_architecture="GPTNeoXForCausalLM", model_name=hf.get("_name_or_path") or "neox",
        **rope(hf))


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """NeoX checkpoint tensors -> jtlens params."""
    H, Dh = cfg.n_heads, cfg.d_head
    r.ignore("*.attention.bias", "*.attention.masked_bias", "*.rotary_emb.inv_freq")

    def layer(l):
        b = f"gpt_neox.layers.{l}"
        attn = per_head_fused_attention(r, f"{b}.attention.query_key_value", f"{b}.attention.dense",
                                        H, Dh)
        mlp = mlp_linears(r, f"{b}.mlp.dense_h_to_4h", f"{b}.mlp.dense_4h_to_h")
        return {"attn": attn, "mlp": mlp, "ln1": norm(r, f"{b}.input_layernorm"),
                "ln2": norm(r, f"{b}.post_attention_layernorm")}

    unembed = "embed_out.weight" if "embed_out.weight" in r else "lm_head.weight"
    return {"embed": {"W_E": r.take("gpt_neox.embed_in.weight")},
            "blocks": r.stack_layers(cfg.n_layers, layer),
            "ln_final": norm(r, "gpt_neox.final_layer_norm"),
            "unembed": {"W_U": r.take(unembed).T, "b_U": np.zeros(cfg.d_vocab, np.float32)}}
