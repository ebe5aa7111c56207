"""BLOOM (BloomForCausalLM) -> jtlens: ALiBi instead of positions, a LayerNorm on the
embeddings (TransformerLens's post_embedding_ln), q/k/v fused per head as in NeoX, biases on
every dense layer, a tied unembedding without bias."""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import (ConversionError, TensorReader, head_dim, mlp_linears,
                                          norm, per_head_fused_attention)
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A BloomConfig dict -> Config. BLOOM has no position table, so no context length of its
    own: n_ctx is its training length, seq_length, when the config records it, else 2048 (as in
    TransformerLens)."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise ConversionError("BLOOM with apply_residual_connection_post_layernorm=True (the "
                              "residual taken after the norm) is not supported")
    d_model, n_heads = hf["hidden_size"], hf["n_head"]
    return Config(
        n_layers=hf["n_layer"], d_model=d_model, n_heads=n_heads, d_head=head_dim(d_model, n_heads),
        d_mlp=4 * d_model, n_ctx=hf.get("seq_length") or 2048, d_vocab=hf["vocab_size"],
        act_fn="gelu_fast", eps=hf.get("layer_norm_epsilon", 1e-5), normalization_type="LN",
        positional_embedding_type="alibi", post_embedding_ln=True, default_prepend_bos=False,
        original_architecture="BloomForCausalLM", model_name=hf.get("_name_or_path") or "bloom")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """BLOOM checkpoint tensors -> jtlens params."""
    def layer(l):
        b = f"transformer.h.{l}"
        attn = per_head_fused_attention(r, f"{b}.self_attention.query_key_value",
                                        f"{b}.self_attention.dense", cfg.n_heads, cfg.d_head)
        return {"attn": attn, "mlp": mlp_linears(r, f"{b}.mlp.dense_h_to_4h", f"{b}.mlp.dense_4h_to_h"),
                "ln1": norm(r, f"{b}.input_layernorm"), "ln2": norm(r, f"{b}.post_attention_layernorm")}

    embed = r.take("transformer.word_embeddings.weight")
    return {"embed": {"W_E": embed, "ln": norm(r, "transformer.word_embeddings_layernorm")},
            "blocks": r.stack_layers(cfg.n_layers, layer), "ln_final": norm(r, "transformer.ln_f"),
            "unembed": {"W_U": r.unembedding("lm_head.weight", embed).T,
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
