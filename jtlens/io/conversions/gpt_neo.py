"""GPT-Neo (GPTNeoForCausalLM) -> jtlens: no attention scaling, alternating global/local layers."""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import TensorReader, attention_linears, head_dim, mlp_linears, norm
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A GPTNeoConfig dict -> Config."""
    d_model, n_heads = hf["hidden_size"], hf["num_heads"]
    types = tuple(hf["attention_layers"])
    return Config(
        n_layers=hf["num_layers"], d_model=d_model, n_heads=n_heads, d_head=head_dim(d_model, n_heads),
        d_mlp=hf.get("intermediate_size") or 4 * d_model, n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"], act_fn=hf.get("activation_function", "gelu_new"),
        eps=hf.get("layer_norm_epsilon", 1e-5), normalization_type="LN", use_attn_scale=False,
        use_local_attn="local" in types, window_size=hf["window_size"] if "local" in types else None,
        attn_types=types if "local" in types else None,
        original_architecture="GPTNeoForCausalLM", model_name=hf.get("_name_or_path") or "gpt-neo")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """GPT-Neo checkpoint tensors -> jtlens params."""
    r.ignore("*.attn.attention.bias", "*.attn.attention.masked_bias")

    def layer(l):
        b = f"transformer.h.{l}"
        a = f"{b}.attn.attention"
        names = {k: f"{a}.{k}_proj" for k in "qkv"} | {"o": f"{a}.out_proj"}
        return {"attn": attention_linears(r, names, cfg.n_heads, cfg.d_head, cfg.d_model),
                "mlp": mlp_linears(r, f"{b}.mlp.c_fc", f"{b}.mlp.c_proj"),
                "ln1": norm(r, f"{b}.ln_1"), "ln2": norm(r, f"{b}.ln_2")}

    W_E = r.take("transformer.wte.weight")
    return {"embed": {"W_E": W_E}, "pos_embed": {"W_pos": r.take("transformer.wpe.weight")},
            "blocks": r.stack_layers(cfg.n_layers, layer), "ln_final": norm(r, "transformer.ln_f"),
            "unembed": {"W_U": r.unembedding("lm_head.weight", W_E).T,
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
