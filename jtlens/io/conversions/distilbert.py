"""DistilBERT (DistilBertForMaskedLM, DistilBertModel) -> jtlens's post-LN encoder.

The same block as BERT under other names, without token-type embeddings; every LayerNorm has
eps 1e-12 (fixed in Hugging Face's code, not in the config).
"""

from __future__ import annotations

from jtlens.io.conversions.common import ConversionError, TensorReader, encoder_params, head_dim
from jtlens.core.config import ACTIVATIONS, Config

ARCHITECTURES = ("DistilBertForMaskedLM", "DistilBertModel")

NAMES = {
    "prefix": "distilbert.", "embeddings": "embeddings", "token_types": None,
    "layer": "transformer.layer.{l}", "q": "attention.q_lin", "k": "attention.k_lin",
    "v": "attention.v_lin", "o": "attention.out_lin", "ln1": "sa_layer_norm", "in": "ffn.lin1",
    "out": "ffn.lin2", "ln2": "output_layer_norm", "head_dense": "vocab_transform",
    "head_ln": "vocab_layer_norm", "decoder": "vocab_projector",
    "decoder_bias": ("vocab_projector.bias",), "ignored": ("{pre}embeddings.position_ids",),
}


def config_from_hf(hf: dict) -> Config:
    """A Hugging Face DistilBERT config dict -> Config (post_ln, no token types)."""
    arch = (hf.get("architectures") or ["DistilBertModel"])[0]
    if arch not in ARCHITECTURES:
        raise ConversionError(f"unsupported DistilBERT architecture {arch!r}; supported: {ARCHITECTURES}")
    act = hf.get("activation", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"DistilBERT activation={act!r} is not supported; one of {ACTIVATIONS}")
    return Config(
        n_layers=hf["n_layers"], d_model=hf["dim"], n_heads=hf["n_heads"],
        d_head=head_dim(hf["dim"], hf["n_heads"]), d_mlp=hf["hidden_dim"],
        n_ctx=hf["max_position_embeddings"], d_vocab=hf["vocab_size"], act_fn=act, eps=1e-12,
        attention_dir="bidirectional", post_ln=True, n_token_types=0,
        mlm_head=arch == "DistilBertForMaskedLM", original_architecture=arch,
        model_name=hf.get("_name_or_path") or "distilbert", default_prepend_bos=False)


def params_from_hf(reader: TensorReader, cfg: Config) -> dict:
    """DistilBERT checkpoint tensors -> jtlens params."""
    return encoder_params(reader, cfg, NAMES)
