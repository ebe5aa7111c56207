"""Phi-1, 1.5, 2 (PhiForCausalLM) -> jtlens: parallel attention + MLP behind one LayerNorm,
partial NeoX-style rotary, biases on every dense layer and on the unembedding."""

from __future__ import annotations

from jtlens.io.conversions.common import (ConversionError, TensorReader, head_dim, rope,
                                          shared_norm_parallel_params)
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A PhiConfig dict -> Config."""
    if hf.get("qk_layernorm"):
        raise ConversionError("Phi with qk_layernorm=True (LayerNorms on queries and keys) is not "
                              "supported: TransformerLens has no such norm")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if (hf.get("num_key_value_heads") or n_heads) != n_heads:
        raise ConversionError("Phi with grouped-query attention (num_key_value_heads != "
                              "num_attention_heads) is not supported")
    d_head = head_dim(d_model, n_heads)
    partial = (hf.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                     hf.get("partial_rotary_factor", 1.0))
    return Config(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=hf["intermediate_size"], n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"], act_fn=hf.get("hidden_act", "gelu_new"),
        eps=hf.get("layer_norm_eps", 1e-5), normalization_type="LN", parallel_attn_mlp=True,
        positional_embedding_type="rotary", rotary_dim=round(partial * d_head),
        default_prepend_bos=False, original_architecture="PhiForCausalLM",
        model_name=hf.get("_name_or_path") or "phi", **rope(hf))


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """Phi checkpoint tensors -> jtlens params (ln2 is ln1: both sublayers read one norm)."""
    r.ignore("*.rotary_emb.inv_freq")

    return shared_norm_parallel_params(
        r, cfg, "model.layers.{l}", {k: f"self_attn.{k}_proj" for k in "qkv"} | {"o": "self_attn.dense"},
        ("mlp.fc1", "mlp.fc2"), "input_layernorm", "model.embed_tokens", "model.final_layernorm")
