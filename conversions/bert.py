"""BERT (BertForMaskedLM, BertForPreTraining, BertModel) -> jtlens's post-LN encoder.

Mapping follows TransformerLens's `convert_bert_weights`; the pooler and the next-sentence
head are not part of HookedEncoder's forward, so their tensors are listed as ignored.
"""

from __future__ import annotations

from conversions.common import ConversionError, TensorReader, heads, heads_out, stack_layers
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
        d_head=d_model // n_heads, d_mlp=hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"], d_vocab=hf["vocab_size"], act_fn=act,
        eps=hf.get("layer_norm_eps", 1e-12), attention_dir="bidirectional", post_ln=True,
        n_token_types=hf.get("type_vocab_size", 2), mlm_head=arch in MLM_ARCHITECTURES,
        original_architecture=arch, model_name=hf.get("_name_or_path") or "bert",
        default_prepend_bos=False)


def _prefix(reader: TensorReader) -> str:
    """BertModel checkpoints name tensors `embeddings.*`; the headed ones `bert.embeddings.*`."""
    return "bert." if "bert.embeddings.word_embeddings.weight" in reader else ""


def _ln(reader: TensorReader, name: str) -> dict:
    return {"w": reader.take(f"{name}.weight"), "b": reader.take(f"{name}.bias")}


def params_from_hf(reader: TensorReader, cfg: Config) -> dict:
    """Checkpoint tensors -> jtlens params (layer-stacked, TransformerLens shapes)."""
    pre = _prefix(reader)
    H, Dh = cfg.n_heads, cfg.d_head
    emb = f"{pre}embeddings"
    params = {
        "embed": {"W_E": reader.take(f"{emb}.word_embeddings.weight"),
                  "ln": _ln(reader, f"{emb}.LayerNorm")},
        "pos_embed": {"W_pos": reader.take(f"{emb}.position_embeddings.weight")},
        "token_type_embed": {"W_token_type": reader.take(f"{emb}.token_type_embeddings.weight")},
    }

    def layer(l):
        b = f"{pre}encoder.layer.{l}"
        attn = {}
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            attn[f"W_{ours}"] = heads(reader.take(f"{b}.attention.self.{theirs}.weight"), H, Dh)
            attn[f"b_{ours}"] = reader.take(f"{b}.attention.self.{theirs}.bias").reshape(H, Dh)
        attn["W_O"] = heads_out(reader.take(f"{b}.attention.output.dense.weight"), H, Dh)
        attn["b_O"] = reader.take(f"{b}.attention.output.dense.bias")
        mlp = {"W_in": reader.take(f"{b}.intermediate.dense.weight").T,
               "b_in": reader.take(f"{b}.intermediate.dense.bias"),
               "W_out": reader.take(f"{b}.output.dense.weight").T,
               "b_out": reader.take(f"{b}.output.dense.bias")}
        return {"attn": attn, "mlp": mlp, "ln1": _ln(reader, f"{b}.attention.output.LayerNorm"),
                "ln2": _ln(reader, f"{b}.output.LayerNorm")}

    params["blocks"] = stack_layers(cfg.n_layers, layer)
    if cfg.mlm_head:
        t = "cls.predictions.transform"
        params["mlm_head"] = {"W": reader.take(f"{t}.dense.weight").T,
                              "b": reader.take(f"{t}.dense.bias"),
                              "ln": _ln(reader, f"{t}.LayerNorm")}
        # The decoder is tied to the word embeddings; save_pretrained may omit the copy.
        decoder = reader.take_optional("cls.predictions.decoder.weight")
        bias = reader.take_optional("cls.predictions.bias")
        if bias is None:
            bias = reader.take("cls.predictions.decoder.bias")
        reader.ignore("cls.predictions.decoder.bias")
        params["unembed"] = {"W_U": (params["embed"]["W_E"] if decoder is None else decoder).T,
                             "b_U": bias}
    reader.ignore(f"{emb}.position_ids", f"{pre}pooler.*", "cls.seq_relationship.*")
    return params
