"""Strict assembly of jtlens params from checkpoint tensors.

A conversion reads tensors through a `TensorReader`, which remembers which ones it consumed:
every checkpoint tensor must be consumed or explicitly ignored, every param filled, every shape
checked against `jtlens.param_shapes(cfg)`. A checkpoint that does not fit fails naming the
first tensor that does not.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Iterable, Mapping

import numpy as np

from jtlens.core.config import Config
from jtlens.core.params import ConversionError, check_and_cast, floating  # noqa: F401  (re-exported for families)


class TensorReader:
    """Hands out checkpoint tensors as float32/64 numpy arrays and tracks what was consumed."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "checkpoint",
                 tied_embeddings: bool = True, stack: Callable = None):
        self.tensors = tensors
        self.source = source
        self.tied_embeddings = tied_embeddings  # config.json's tie_word_embeddings
        self.used: set[str] = set()
        self.ignored: set[str] = set()
        # how per-layer params become params["blocks"]; a streaming load places each layer on
        # its devices as it is converted instead of stacking all of them on the host
        self.stack = stack or stack_layers

    def stack_layers(self, n_layers: int, per_layer: Callable[[int], dict]) -> dict:
        """params["blocks"] from `per_layer(l)` for each layer (see `stack_layers`)."""
        return self.stack(n_layers, per_layer)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            near = [k for k in self.tensors if k.split(".")[-1] == name.split(".")[-1]][:5]
            raise ConversionError(f"{self.source}: missing tensor {name!r}"
                                  + (f" (similar: {near})" if near else ""))
        self.used.add(name)
        arr = floating(np.asarray(self.tensors[name]), f"{self.source}: tensor {name!r}")
        return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)

    def take_optional(self, name: str):
        return self.take(name) if name in self.tensors else None

    def unembedding(self, name: str, embed: np.ndarray) -> np.ndarray:
        """The output projection `name` [d_vocab, D]; `embed` when the config ties them and the
        checkpoint leaves it out (an untied model without it is a missing tensor)."""
        if name in self.tensors or not self.tied_embeddings:
            return self.take(name)
        return embed

    def ignore(self, *patterns: str):
        """Mark tensors matching glob patterns as deliberately unused (e.g. cached rotary buffers)."""
        for k in self.tensors:
            if any(fnmatch.fnmatch(k, p) for p in patterns):
                self.ignored.add(k)

    def finish(self):
        left = sorted(set(self.tensors) - self.used - self.ignored)
        if left:
            raise ConversionError(f"{self.source}: {len(left)} tensor(s) not used by the conversion, "
                                  f"first {left[0]!r}; this checkpoint does not fit the architecture "
                                  f"(all unused: {left[:10]}{'...' if len(left) > 10 else ''})")


def stack_layers(n_layers: int, per_layer: Callable[[int], dict]) -> dict:
    """Stack per-layer param dicts (same nesting) along a new leading layer axis."""
    layers = [per_layer(l) for l in range(n_layers)]

    def stack(items, path):
        first = items[0]
        if isinstance(first, dict):
            return {k: stack([it[k] for it in items], f"{path}.{k}" if path else k) for k in first}
        for l, item in enumerate(items):
            if np.shape(item) != np.shape(first):
                raise ConversionError(f"param blocks.{path}: layer {l} has shape {np.shape(item)}, "
                                      f"layer 0 has {np.shape(first)}; the checkpoint's layers "
                                      f"do not agree")
        return np.stack(items)

    return stack(layers, "")


def head_dim(d_model: int, n_heads: int) -> int:
    """d_model // n_heads, refusing a head count that does not divide the model width."""
    if n_heads <= 0 or d_model % n_heads:
        raise ConversionError(f"config.json: hidden size {d_model} is not divisible by "
                              f"{n_heads} attention heads")
    return d_model // n_heads


def heads(w: np.ndarray, n_heads: int, d_head: int) -> np.ndarray:
    """A torch Linear weight [n_heads*d_head, d_model] -> [n_heads, d_model, d_head]."""
    return w.reshape(n_heads, d_head, -1).transpose(0, 2, 1)


def heads_out(w: np.ndarray, n_heads: int, d_head: int) -> np.ndarray:
    """An output Linear weight [d_model, n_heads*d_head] -> [n_heads, d_head, d_model]."""
    return w.T.reshape(n_heads, d_head, -1)


def shared_norm_parallel_params(r: TensorReader, cfg: Config, layer: str, attn: dict,
                                mlp: tuple, ln: str, embed: str, ln_final: str) -> dict:
    """Params of a decoder whose blocks run attention and MLP in parallel behind one LayerNorm
    (GPT-J, Phi): ln2 is ln1. `layer` is the block path with "{l}"; `attn` maps q, k, v, o to
    Linears under it, `mlp` names its two Linears, `ln` its norm; the unembedding (lm_head)
    has a bias."""
    def one(l):
        b = layer.format(l=l)
        shared = norm(r, f"{b}.{ln}")
        return {"attn": attention_linears(r, {k: f"{b}.{v}" for k, v in attn.items()},
                                          cfg.n_heads, cfg.d_head, cfg.d_model),
                "mlp": mlp_linears(r, f"{b}.{mlp[0]}", f"{b}.{mlp[1]}"), "ln1": shared, "ln2": shared}

    return {"embed": {"W_E": r.take(f"{embed}.weight")},
            "blocks": r.stack_layers(cfg.n_layers, one), "ln_final": norm(r, ln_final),
            "unembed": {"W_U": r.take("lm_head.weight").T, "b_U": r.take("lm_head.bias")}}


def per_head_fused_attention(reader: TensorReader, qkv: str, out: str, n_heads: int,
                             d_head: int) -> dict:
    """Attention params from a fused q/k/v Linear whose rows run (head, q|k|v, d_head) (NeoX,
    BLOOM) and an output Linear, both with biases."""
    w = reader.take(f"{qkv}.weight").reshape(n_heads, 3, d_head, -1)
    bias = reader.take(f"{qkv}.bias").reshape(n_heads, 3, d_head)
    W_q, W_k, W_v = np.transpose(w, (1, 0, 3, 2))  # each [H, D, Dh]
    return {"W_Q": W_q, "W_K": W_k, "W_V": W_v, "b_Q": bias[:, 0], "b_K": bias[:, 1],
            "b_V": bias[:, 2], "W_O": heads_out(reader.take(f"{out}.weight"), n_heads, d_head),
            "b_O": reader.take(f"{out}.bias")}


def zeros_or(x, shape: Iterable[int]) -> np.ndarray:
    return np.zeros(tuple(shape), np.float32) if x is None else x


def norm(reader: TensorReader, name: str, bias: bool = True) -> dict:
    """A LayerNorm ({w, b}) or, with bias=False, an RMSNorm ({w}) stored as `name.weight/.bias`."""
    out = {"w": reader.take(f"{name}.weight")}
    if bias:
        out["b"] = reader.take(f"{name}.bias")
    return out


def attention_linears(reader: TensorReader, names: dict, n_heads: int, d_head: int,
                      d_model: int) -> dict:
    """Attention params from separate q/k/v/o torch Linears (`names`: "q", "k", "v", "o" ->
    module path); absent biases are zeros."""
    def bias(path, shape):
        return zeros_or(reader.take_optional(f"{path}.bias"), (int(np.prod(shape)),)).reshape(shape)

    attn = {}
    for q in "QKV":
        path = names[q.lower()]
        attn[f"W_{q}"] = heads(reader.take(f"{path}.weight"), n_heads, d_head)
        attn[f"b_{q}"] = bias(path, (n_heads, d_head))
    attn["W_O"] = heads_out(reader.take(f"{names['o']}.weight"), n_heads, d_head)
    attn["b_O"] = bias(names["o"], (d_model,))
    return attn


def mlp_linears(reader: TensorReader, w_in: str, w_out: str) -> dict:
    """A plain MLP from two torch Linears (weights [out, in]) with biases."""
    return {"W_in": reader.take(f"{w_in}.weight").T, "b_in": reader.take(f"{w_in}.bias"),
            "W_out": reader.take(f"{w_out}.weight").T, "b_out": reader.take(f"{w_out}.bias")}


def rope(hf: dict) -> dict:
    """Rotary settings: base, (Llama-3) NTK-by-parts and YaRN scaling; other scalings are refused.

    Gemma 3 gives sliding-window and global layers their own settings (transformers 5's
    per-layer-type `rope_parameters`, or 4's `rope_local_base_freq`): the sliding layers' base
    becomes `rotary_base_local` and the global layers' linear scaling `rotary_scaling_factor`.
    """
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        return _per_layer_type_rope(params["full_attention"] or {},
                                    params.get("sliding_attention") or {})
    if "rope_local_base_freq" in hf:
        return _per_layer_type_rope(dict(hf.get("rope_scaling") or {}, rope_theta=hf["rope_theta"]),
                                    {"rope_theta": hf["rope_local_base_freq"]})
    scaling = hf.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out = {"rotary_base": float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)}
    if kind == "llama3":
        out.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=scaling["factor"],
                   NTK_by_parts_low_freq_factor=scaling["low_freq_factor"],
                   NTK_by_parts_high_freq_factor=scaling["high_freq_factor"],
                   NTK_original_ctx_len=scaling["original_max_position_embeddings"])
    elif kind == "yarn":
        out.update(_yarn(scaling))
    elif kind not in ("default", None):
        raise ConversionError(f"rotary scaling {kind!r} is not supported (only default, llama3 "
                              f"and yarn)")
    return out


def _yarn(scaling: dict) -> dict:
    """YaRN's settings, its attention factor as transformers infers it (0.1 ln(factor) + 1)."""
    if scaling.get("mscale") or scaling.get("mscale_all_dim"):
        raise ConversionError("YaRN rotary scaling with mscale / mscale_all_dim is not supported")
    factor = float(scaling["factor"])
    attention = scaling.get("attention_factor") or (0.1 * math.log(factor) + 1 if factor > 1 else 1.0)
    return dict(use_yarn_rope=True, yarn_factor=factor, yarn_attention_factor=float(attention),
                yarn_beta_fast=float(scaling.get("beta_fast") or 32.0),
                yarn_beta_slow=float(scaling.get("beta_slow") or 1.0),
                yarn_original_max_position_embeddings=scaling["original_max_position_embeddings"],
                yarn_truncate=scaling.get("truncate", True))


def _per_layer_type_rope(full: dict, sliding: dict) -> dict:
    """Global layers: default or linear rotary; sliding layers: default, maybe another base."""
    kinds = (full.get("rope_type", "default"), sliding.get("rope_type", "default"))
    if kinds[0] not in ("default", "linear") or kinds[1] != "default":
        raise ConversionError(f"rotary scaling {kinds[0]!r} on global layers and {kinds[1]!r} on "
                              f"sliding-window layers is not supported (only default, and linear "
                              f"on global layers)")
    base = float(full.get("rope_theta") or 10000.0)
    local = float(sliding.get("rope_theta") or base)
    out = {"rotary_base": base, "rotary_base_local": None if local == base else local}
    if kinds[0] == "linear":
        out["rotary_scaling_factor"] = float(full["factor"])
    return out


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

    params["blocks"] = reader.stack_layers(cfg.n_layers, layer)
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
