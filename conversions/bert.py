"""BERT (BertForMaskedLM, BertForPreTraining, BertModel) -> jtlens's post-LN encoder.

Mapping follows TransformerLens's `convert_bert_weights`; the pooler and the next-sentence
head are not part of HookedEncoder's forward, so their tensors are listed as ignored.
"""

from __future__ import annotations

from conversions.common import (ConversionError, TensorReader, head_dim, heads, heads_out,
                                mlp_linears, norm, stack_layers)
from jtlens.config import ACTIVATIONS, Config

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


def encoder_params(reader: TensorReader, cfg: Config, names: dict) -> dict:
    """Checkpoint tensors named as in `names` -> jtlens encoder params (layer-stacked)."""
    # Base-model checkpoints (BertModel) have no `bert.` prefix; headed ones do.
    pre = names["prefix"] if f"{names['prefix']}{names['embeddings']}.word_embeddings.weight" in reader else ""
    H, Dh = cfg.n_heads, cfg.d_head
    emb = f"{pre}{names['embeddings']}"
    params = {
        "embed": {"W_E": reader.take(f"{emb}.word_embeddings.weight"),
                  "ln": norm(reader, f"{emb}.LayerNorm")},
        "pos_embed": {"W_pos": reader.take(f"{emb}.position_embeddings.weight")},
    }
    if cfg.n_token_types:
        params["token_type_embed"] = {"W_token_type": reader.take(f"{emb}.{names['token_types']}.weight")}

    def layer(l):
        b = pre + names["layer"].format(l=l)
        attn = {}
        for q in "QKV":
            attn[f"W_{q}"] = heads(reader.take(f"{b}.{names[q.lower()]}.weight"), H, Dh)
            attn[f"b_{q}"] = reader.take(f"{b}.{names[q.lower()]}.bias").reshape(H, Dh)
        attn["W_O"] = heads_out(reader.take(f"{b}.{names['o']}.weight"), H, Dh)
        attn["b_O"] = reader.take(f"{b}.{names['o']}.bias")
        mlp = mlp_linears(reader, f"{b}.{names['in']}", f"{b}.{names['out']}")
        return {"attn": attn, "mlp": mlp, "ln1": norm(reader, f"{b}.{names['ln1']}"),
                "ln2": norm(reader, f"{b}.{names['ln2']}")}

    params["blocks"] = stack_layers(cfg.n_layers, layer)
    if cfg.mlm_head:
        params["mlm_head"] = {"W": reader.take(f"{names['head_dense']}.weight").T,
                              "b": reader.take(f"{names['head_dense']}.bias"),
                              "ln": norm(reader, names["head_ln"])}
        # The decoder is tied to the word embeddings; save_pretrained may omit the copy.
        decoder = reader.take_optional(f"{names['decoder']}.weight")
        first, *others = [n for n in names["decoder_bias"] if n in reader] or names["decoder_bias"][:1]
        bias = reader.take(first)
        reader.ignore(*others)  # a second name of the same tied bias
        params["unembed"] = {"W_U": (params["embed"]["W_E"] if decoder is None else decoder).T,
                             "b_U": bias}
    reader.ignore(*(n.format(pre=pre) for n in names["ignored"]))
    return params


def params_from_hf(reader: TensorReader, cfg: Config) -> dict:
    """BERT checkpoint tensors -> jtlens params (TransformerLens's convert_bert_weights)."""
    return encoder_params(reader, cfg, BERT_NAMES)
