"""Llama-style decoders (Llama, Mistral, Qwen2, Qwen3) -> jtlens.

They share one layout (RMSNorm, rotary, grouped-query attention, SwiGLU MLP); the differences are
config knobs: q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3), sliding windows (Mistral),
Llama-3 rotary scaling.
"""

from __future__ import annotations

import numpy as np

from conversions.common import (ConversionError, TensorReader, heads, heads_out, stack_layers,
                                zeros_or)
from jtlens.config import Config


def rope(hf: dict) -> dict:
    """Rotary settings: base and (Llama-3) NTK-by-parts scaling; other scalings are refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out = {"rotary_base": float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)}
    if kind == "llama3":
        out.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=scaling["factor"],
                   NTK_by_parts_low_freq_factor=scaling["low_freq_factor"],
                   NTK_by_parts_high_freq_factor=scaling["high_freq_factor"],
                   NTK_original_ctx_len=scaling["original_max_position_embeddings"])
    elif kind not in ("default", None):
        raise ConversionError(f"rotary scaling {kind!r} is not supported (only default and llama3)")
    return out


def config_from_hf(hf: dict) -> Config:
    """A Llama/Mistral/Qwen2/Qwen3 config dict -> Config."""
    arch = hf["architectures"][0]
    n_heads, n_layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    n_kv = hf.get("num_key_value_heads") or n_heads
    window = hf.get("sliding_window")
    if arch.startswith("Qwen") and not hf.get("use_sliding_window", False):
        window = None  # Qwen configs carry a window size they do not use
    local = bool(window) and window < hf["max_position_embeddings"]
    if arch.startswith("Qwen") and local and hf.get("max_window_layers", n_layers) < n_layers:
        raise ConversionError("Qwen sliding windows on only some layers are not supported")
    return Config(
        n_layers=n_layers, d_model=hf["hidden_size"], n_heads=n_heads, d_head=d_head,
        d_mlp=hf["intermediate_size"], n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"], act_fn=hf.get("hidden_act", "silu"), eps=hf.get("rms_norm_eps", 1e-6),
        normalization_type="RMS", final_rms=True, gated_mlp=True,
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_adjacent_pairs=False,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        use_qk_norm=arch == "Qwen3ForCausalLM",
        use_local_attn=local, window_size=window if local else None,
        attn_types=("local",) * n_layers if local else None,
        default_prepend_bos=not arch.startswith("Qwen"),
        original_architecture=arch, model_name=hf.get("_name_or_path") or arch, **rope(hf))


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """Llama-layout checkpoint tensors -> jtlens params."""
    H, Hkv, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    r.ignore("*.rotary_emb.inv_freq")

    def bias(name, n):
        return zeros_or(r.take_optional(f"{name}.bias"), (n * Dh,)).reshape(n, Dh)

    def layer(l):
        b = f"model.layers.{l}"
        a = f"{b}.self_attn"
        attn = {"W_Q": heads(r.take(f"{a}.q_proj.weight"), H, Dh), "b_Q": bias(f"{a}.q_proj", H),
                "W_K": heads(r.take(f"{a}.k_proj.weight"), Hkv, Dh), "b_K": bias(f"{a}.k_proj", Hkv),
                "W_V": heads(r.take(f"{a}.v_proj.weight"), Hkv, Dh), "b_V": bias(f"{a}.v_proj", Hkv),
                "W_O": heads_out(r.take(f"{a}.o_proj.weight"), H, Dh)}
        attn["b_O"] = zeros_or(r.take_optional(f"{a}.o_proj.bias"), (cfg.d_model,))
        if cfg.use_qk_norm:
            attn["q_norm"] = {"w": r.take(f"{a}.q_norm.weight")}
            attn["k_norm"] = {"w": r.take(f"{a}.k_norm.weight")}
        m = f"{b}.mlp"
        mlp = {"W_gate": r.take(f"{m}.gate_proj.weight").T, "W_in": r.take(f"{m}.up_proj.weight").T,
               "W_out": r.take(f"{m}.down_proj.weight").T}
        mlp["b_in"] = zeros_or(r.take_optional(f"{m}.up_proj.bias"), (cfg.d_mlp,))
        mlp["b_out"] = zeros_or(r.take_optional(f"{m}.down_proj.bias"), (cfg.d_model,))
        if f"{m}.gate_proj.bias" in r:
            raise ConversionError(f"{m}.gate_proj.bias: a bias on the gate projection has no "
                                  f"place in TransformerLens's gated MLP")
        return {"attn": attn, "mlp": mlp,
                "ln1": {"w": r.take(f"{b}.input_layernorm.weight")},
                "ln2": {"w": r.take(f"{b}.post_attention_layernorm.weight")}}

    W_E = r.take("model.embed_tokens.weight")
    lm_head = r.take_optional("lm_head.weight")  # absent when tied to the embeddings
    return {"embed": {"W_E": W_E}, "blocks": stack_layers(cfg.n_layers, layer),
            "ln_final": {"w": r.take("model.norm.weight")},
            "unembed": {"W_U": (W_E if lm_head is None else lm_head).T,
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
