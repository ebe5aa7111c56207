"""GPT-J (GPTJForCausalLM) -> jtlens: parallel attention + MLP behind one LayerNorm,
interleaved (GPT-J style) partial rotary, an unembedding with a bias."""

from __future__ import annotations

from jtlens.io.conversions.common import TensorReader, head_dim, shared_norm_parallel_params
from jtlens.core.config import Config


def config_from_hf(hf: dict) -> Config:
    """A GPTJConfig dict -> Config."""
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return Config(
        n_layers=hf["n_layer"], d_model=d_model, n_heads=n_heads, d_head=head_dim(d_model, n_heads),
        d_mlp=hf.get("n_inner") or 4 * d_model, n_ctx=hf["n_positions"], d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "gelu_new"), eps=hf.get("layer_norm_epsilon", 1e-5),
        normalization_type="LN", parallel_attn_mlp=True, positional_embedding_type="rotary",
        rotary_dim=hf["rotary_dim"], rotary_adjacent_pairs=True,
        original_architecture="GPTJForCausalLM", model_name=hf.get("_name_or_path") or "gptj")


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """GPT-J checkpoint tensors -> jtlens params (ln2 is ln1: both sublayers read one norm)."""
    r.ignore("*.attn.bias", "*.attn.masked_bias", "*.attn.embed_positions")

    return shared_norm_parallel_params(
        r, cfg, "transformer.h.{l}", {k: f"attn.{k}_proj" for k in "qkv"} | {"o": "attn.out_proj"},
        ("mlp.fc_in", "mlp.fc_out"), "ln_1", "transformer.wte", "transformer.ln_f")
