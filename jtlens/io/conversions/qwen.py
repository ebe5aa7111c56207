"""Qwen 1 (QWenLMHeadModel, remote code on the hub) -> jtlens, from config.json and the
tensors alone: no remote code runs.

A Llama-style decoder under GPT-2-style names: RMSNorms ln_1 / ln_2 / ln_f, a fused q|k|v
Linear `attn.c_attn` with a bias (rows: all queries, all keys, all values), `attn.c_proj`, and a
SwiGLU MLP computing c_proj(w1(x) * silu(w2(x))), so w2 is the gate and config.json's
intermediate_size is twice the MLP width. Its log-n attention and dynamic-NTK rotary act only
past the training length `seq_length`, which jtlens refuses (Config.position_limit).
"""

from __future__ import annotations

import numpy as np

from jtlens.core.config import Config
from jtlens.io.conversions.common import ConversionError, TensorReader, head_dim, heads, heads_out, norm


def config_from_hf(hf: dict) -> Config:
    """A Qwen 1 config dict -> Config."""
    n_heads, d_model = hf["num_attention_heads"], hf["hidden_size"]
    d_head = head_dim(d_model, n_heads)
    if hf.get("kv_channels", d_head) != d_head:
        raise ConversionError(f"kv_channels={hf['kv_channels']} differs from hidden_size / "
                              f"num_attention_heads = {d_head}; Qwen 1 splits c_attn by hidden_size, "
                              f"so such a checkpoint does not run")
    if not hf.get("no_bias", True):
        raise ConversionError("no_bias=false gives the MLP's gate projection (w2) a bias, which "
                              "TransformerLens's gated MLP has no place for")
    for key in ("apply_residual_connection_post_layernorm", "use_cache_quantization"):
        if hf.get(key):
            raise ConversionError(f"{key}=true is not supported (released Qwen 1 models set it "
                                  f"false)")
    if hf["intermediate_size"] % 2:
        raise ConversionError(f"intermediate_size={hf['intermediate_size']} is odd; Qwen 1's MLP "
                              f"width is half of it")
    return Config(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads, d_head=d_head,
        d_mlp=hf["intermediate_size"] // 2, n_ctx=hf["seq_length"], d_vocab=hf["vocab_size"],
        act_fn="silu", normalization_type="RMS", final_rms=True, gated_mlp=True,
        eps=hf.get("layer_norm_epsilon", 1e-6), positional_embedding_type="rotary",
        rotary_dim=int(d_head * hf.get("rotary_pct", 1.0)), rotary_adjacent_pairs=False,
        rotary_base=float(hf.get("rotary_emb_base", 10000.0)),
        use_logn_attn=hf.get("use_logn_attn", False),
        use_dynamic_ntk_rope=hf.get("use_dynamic_ntk", False),
        train_seq_length=hf["seq_length"], default_prepend_bos=False,
        original_architecture="QWenLMHeadModel",
        model_name=hf.get("_name_or_path") or "QWenLMHeadModel")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """Qwen 1 checkpoint tensors -> jtlens params."""
    H, Dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    r.ignore("*.rotary_emb.inv_freq")

    def layer(l):
        b = f"transformer.h.{l}"
        q, k, v = np.split(r.take(f"{b}.attn.c_attn.weight"), 3)
        b_q, b_k, b_v = np.split(r.take(f"{b}.attn.c_attn.bias"), 3)
        attn = {"W_Q": heads(q, H, Dh), "W_K": heads(k, H, Dh), "W_V": heads(v, H, Dh),
                "b_Q": b_q.reshape(H, Dh), "b_K": b_k.reshape(H, Dh), "b_V": b_v.reshape(H, Dh),
                "W_O": heads_out(r.take(f"{b}.attn.c_proj.weight"), H, Dh),
                "b_O": np.zeros(D, np.float32)}
        mlp = {"W_in": r.take(f"{b}.mlp.w1.weight").T, "W_gate": r.take(f"{b}.mlp.w2.weight").T,
               "W_out": r.take(f"{b}.mlp.c_proj.weight").T,
               "b_in": np.zeros(cfg.d_mlp, np.float32), "b_out": np.zeros(D, np.float32)}
        return {"attn": attn, "mlp": mlp, "ln1": norm(r, f"{b}.ln_1", bias=False),
                "ln2": norm(r, f"{b}.ln_2", bias=False)}

    return {"embed": {"W_E": r.take("transformer.wte.weight")},
            "blocks": r.stack_layers(cfg.n_layers, layer),
            "ln_final": norm(r, "transformer.ln_f", bias=False),
            "unembed": {"W_U": r.take("lm_head.weight").T,  # never tied in Qwen 1
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
