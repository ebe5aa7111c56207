"""GPT-2 (GPT2LMHeadModel) -> jtlens. HF stores attention/MLP as Conv1D: weights are [in, out]."""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import ConversionError, TensorReader, head_dim, norm
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A GPT2Config dict -> Config (TransformerLens's field mapping)."""
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    if hf.get("reorder_and_upcast_attn"):
        raise ConversionError("GPT-2 with reorder_and_upcast_attn=True is not supported")
    return Config(
        n_layers=hf["n_layer"], d_model=d_model, n_heads=n_heads, d_head=head_dim(d_model, n_heads),
        d_mlp=hf.get("n_inner") or 4 * d_model, n_ctx=hf.get("n_positions", hf.get("n_ctx")),
        d_vocab=hf["vocab_size"], act_fn=hf.get("activation_function", "gelu_new"),
        eps=hf.get("layer_norm_epsilon", 1e-5), normalization_type="LN",
        use_attn_scale=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        original_architecture="GPT2LMHeadModel", model_name=hf.get("_name_or_path") or "gpt2")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """GPT-2 checkpoint tensors -> jtlens params."""
    H, Dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    r.ignore("*.attn.bias", "*.attn.masked_bias")  # causal-mask buffers in older checkpoints
    pre = "transformer." if "transformer.wte.weight" in r else ""

    def layer(l):
        b = f"{pre}h.{l}"
        qkv_w = r.take(f"{b}.attn.c_attn.weight").reshape(D, 3, H, Dh)   # [D, (3 H Dh)]
        qkv_b = r.take(f"{b}.attn.c_attn.bias").reshape(3, H, Dh)
        W_q, W_k, W_v = np.transpose(qkv_w, (1, 2, 0, 3))                 # each [H, D, Dh]
        attn = {"W_Q": W_q, "W_K": W_k, "W_V": W_v,
                "b_Q": qkv_b[0], "b_K": qkv_b[1], "b_V": qkv_b[2],
                "W_O": r.take(f"{b}.attn.c_proj.weight").reshape(H, Dh, D),
                "b_O": r.take(f"{b}.attn.c_proj.bias")}
        mlp = {"W_in": r.take(f"{b}.mlp.c_fc.weight"), "b_in": r.take(f"{b}.mlp.c_fc.bias"),
               "W_out": r.take(f"{b}.mlp.c_proj.weight"), "b_out": r.take(f"{b}.mlp.c_proj.bias")}
        return {"attn": attn, "mlp": mlp, "ln1": norm(r, f"{b}.ln_1"), "ln2": norm(r, f"{b}.ln_2")}

    W_E = r.take(f"{pre}wte.weight")
    return {"embed": {"W_E": W_E}, "pos_embed": {"W_pos": r.take(f"{pre}wpe.weight")},
            "blocks": r.stack_layers(cfg.n_layers, layer), "ln_final": norm(r, f"{pre}ln_f"),
            "unembed": {"W_U": r.unembedding("lm_head.weight", W_E).T,
                        "b_U": np.zeros(cfg.d_vocab, np.float32)}}
