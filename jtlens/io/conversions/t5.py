"""T5 (T5ForConditionalGeneration, v1.0 and v1.1) -> jtlens's encoder-decoder.

Mapping follows TransformerLens's `convert_t5_weights`, plus what it leaves out: the gated
MLPs of v1.1 (`wi_0` is the gate, `wi_1` the linear half) and an untied `lm_head`. The config
is the decoder's with `cross_attention=True`; the encoder's params sit under "encoder".
"""

from __future__ import annotations

import numpy as np

from jtlens.core.config import ACTIVATIONS, Config
from jtlens.io.conversions.common import ConversionError, TensorReader, attention_linears, norm


def _mlp_kind(proj: str) -> tuple[str, bool]:
    """feed_forward_proj ("relu", "gated-gelu", ...) -> (act_fn, gated), as T5Config reads it."""
    gated = proj.startswith("gated-")
    act = proj[len("gated-"):] if gated else proj
    act = "gelu_new" if proj == "gated-gelu" else act  # T5Config's own special case for v1.1
    if act not in ACTIVATIONS or "-" in act:
        raise ConversionError(f"T5 feed_forward_proj={proj!r} is not supported; use 'relu', "
                              f"'gated-gelu' or '[gated-]<one of {ACTIVATIONS}>'")
    return act, gated


def config_from_hf(hf: dict) -> Config:
    """A Hugging Face T5 config dict -> Config (the decoder's, cross_attention=True)."""
    layers = hf["num_layers"]
    if (hf.get("num_decoder_layers") or layers) != layers:
        raise ConversionError(f"T5 num_decoder_layers={hf['num_decoder_layers']} differs from "
                              f"num_layers={layers}; encoder and decoder must have as many layers")
    act, gated = _mlp_kind(hf.get("feed_forward_proj", "relu"))
    # transformers 5 saves scale_decoder_outputs; older configs say it with tie_word_embeddings
    # (v1.0 ties and scales, v1.1 does neither).
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    return Config(
        n_layers=layers, d_model=hf["d_model"], n_heads=hf["num_heads"], d_head=hf["d_kv"],
        d_mlp=hf["d_ff"], d_vocab=hf["vocab_size"], n_ctx=hf.get("n_positions") or 512,
        act_fn=act, gated_mlp=gated, normalization_type="RMS",
        eps=hf.get("layer_norm_epsilon", 1e-6), use_attn_scale=False,
        positional_embedding_type="relative_positional_bias",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        cross_attention=True, scale_decoder_outputs=bool(scale),
        decoder_start_token_id=hf.get("decoder_start_token_id"),
        original_architecture="T5ForConditionalGeneration",
        model_name=hf.get("_name_or_path") or "t5", default_prepend_bos=False)


def _mlp(r: TensorReader, path: str, cfg: Config) -> dict:
    """T5's bias-free MLP (DenseReluDense, or the gated DenseGatedActDense)."""
    out = {"W_out": r.take(f"{path}.wo.weight").T}
    if cfg.gated_mlp:
        out["W_gate"], out["W_in"] = r.take(f"{path}.wi_0.weight").T, r.take(f"{path}.wi_1.weight").T
    else:
        out["W_in"] = r.take(f"{path}.wi.weight").T
    out["b_in"], out["b_out"] = np.zeros(cfg.d_mlp, np.float32), np.zeros(cfg.d_model, np.float32)
    return out


def _stack(r: TensorReader, cfg: Config, stack: str) -> dict:
    """One stack's params: blocks, the relative-bias table (its first layer's) and final norm."""
    def attn(path):
        return attention_linears(r, {x: f"{path}.{x}" for x in "qkvo"}, cfg.n_heads, cfg.d_head,
                                 cfg.d_model)

    def layer(l):
        b = f"{stack}.block.{l}.layer"
        params = {"attn": attn(f"{b}.0.SelfAttention"), "ln1": norm(r, f"{b}.0.layer_norm", False)}
        if stack == "decoder":
            params.update(cross_attn=attn(f"{b}.1.EncDecAttention"),
                          ln2=norm(r, f"{b}.1.layer_norm", False),
                          ln3=norm(r, f"{b}.2.layer_norm", False), mlp=_mlp(r, f"{b}.2.DenseReluDense", cfg))
        else:
            params.update(ln2=norm(r, f"{b}.1.layer_norm", False), mlp=_mlp(r, f"{b}.1.DenseReluDense", cfg))
        return params

    table = r.take(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    return {"blocks": r.stack_layers(cfg.n_layers, layer), "rel_pos_bias": {"W_rel_pos": table},
            "ln_final": norm(r, f"{stack}.final_layer_norm", False)}


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """T5 checkpoint tensors -> jtlens params (the decoder's at the top, the encoder's under
    "encoder", one shared embedding)."""
    W_E = r.take("shared.weight")
    # Both stacks' embed_tokens are the shared table (tied; save_pretrained usually drops them);
    # Hugging Face itself ignores a cross-attention bias table of the first decoder layer.
    r.ignore("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
             "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
    params = _stack(r, cfg, "decoder")
    params["encoder"] = _stack(r, cfg, "encoder")
    W_U = r.take("lm_head.weight") if "lm_head.weight" in r else W_E  # v1.1 saved untied
    params.update(embed={"W_E": W_E}, unembed={"W_U": W_U.T, "b_U": np.zeros(cfg.d_vocab, np.float32)})
    return params
