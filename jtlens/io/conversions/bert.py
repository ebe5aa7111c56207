"""BERT (BertForMaskedLM, BertForPreTraining, BertModel) -> jtlens's post-LN encoder.

Mapping follows TransformerLens's `convert_bert_weights`; the pooler and the next-sentence
head are not part of HookedEncoder's forward, so their tensors are listed as ignored.
"""

from __future__ import annotations

from jtlens.io.conversions.common import ConversionError, TensorReader, encoder_params, head_dim
from jtlens.core.config import ACTIVATIONS, Config

MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")
ARCHITECTURES = MLM_ARCHITECTURES + ("BertModel",)


def config_from_hf(hf: dict) -> Config:
    """A Hugging Face BERT config dict -> Config (post_ln, token types, MLM head if any)."""
    arch = (hf.get("architectures") or ["BertModel"])[0]
    if arch not in ARCHITECTURES:
        raise ConversionError(f"unsupported BERT architecture {arch!r}; supported: {ARCHITECTURES}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is "
                              f"not supported; only 'absolute'")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"BERT hidden_act={act!r} is not supported; one of {ACTIVATIONS}")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return Config(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads,
        d_head=head_dim(d_model, n_heads), d_mlp=hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"], d_vocab=hf["vocab_size"], act_fn=act,
        eps=hf.get("layer_norm_eps", 1e-12), attention_dir="bidirectional", post_ln=True,
        n_token_types=hf.get("type_vocab_size", 2), mlm_head=arch in MLM_ARCHITECTURES,
        original_architecture=arch, model_name=hf.get("_name_or_path") or "bert",
        default_prepend_bos=False)


# Where each param sits in a checkpoint; `{l}` is the layer. DistilBERT reuses this with its names.
BERT_NAMES = {
    "prefix": "bert.", "embeddings": "embeddings", "token_types": "token_type_embeddings",
    "layer": "encoder.layer.{l}", "q": "attention.self.query", "k": "attention.self.key",
    "v": "attention.self.value", "o": "attention.output.dense",
    "ln1": "attention.output.LayerNorm", "in": "intermediate.dense", "out": "output.dense",
    "ln2": "output.LayerNorm", "head_dense": "cls.predictions.transform.dense",
    "head_ln": "cls.predictions.transform.LayerNorm", "decoder": "cls.predictions.decoder",
    "decoder_bias": ("cls.predictions.bias", "cls.predictions.decoder.bias"),
    "ignored": ("{pre}embeddings.position_ids", "{pre}pooler.*", "cls.seq_relationship.*"),
}


def params_from_hf(reader: TensorReader, cfg: Config) -> dict:
    """BERT checkpoint tensors -> jtlens params (TransformerLens's convert_bert_weights)."""
    return encoder_params(reader, cfg, BERT_NAMES)
