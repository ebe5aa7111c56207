"""Strict assembly of jtlens params from checkpoint tensors.

A conversion reads tensors through a `TensorReader`, which remembers which ones it consumed:
every checkpoint tensor must be consumed or explicitly ignored, every param filled, every shape
checked against `jtlens.param_shapes(cfg)`. A checkpoint that does not fit fails naming the
first tensor that does not.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np

from jtlens.config import Config
from jtlens.model import param_shapes


class ConversionError(ValueError):
    """A checkpoint does not fit the architecture it claims."""


class TensorReader:
    """Hands out checkpoint tensors as float32/64 numpy arrays and tracks what was consumed."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "checkpoint",
                 tied_embeddings: bool = True):
        self.tensors = tensors
        self.source = source
        self.tied_embeddings = tied_embeddings  # config.json's tie_word_embeddings
        self.used: set[str] = set()
        self.ignored: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            near = [k for k in self.tensors if k.split(".")[-1] == name.split(".")[-1]][:5]
            raise ConversionError(f"{self.source}: missing tensor {name!r}"
                                  + (f" (similar: {near})" if near else ""))
        self.used.add(name)
        arr = np.asarray(floating(self.tensors[name], f"{self.source}: tensor {name!r}"))
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


def check_and_cast(params: dict, cfg: Config, dtype=None, cast: bool = True) -> dict:
    """Check `params` has exactly the tree and shapes of `param_shapes(cfg)`, with floating-point
    leaves; cast to the model dtype (unless cast=False)."""
    want = param_shapes(cfg)
    dtype = jnp.dtype(dtype or cfg.dtype)

    def walk(got, exp, path):
        if isinstance(exp, dict):
            if not isinstance(got, dict):
                raise ConversionError(f"param {path or '<root>'} should be a dict")
            missing = sorted(set(exp) - set(got))
            extra = sorted(set(got) - set(exp))
            if missing:
                raise ConversionError(f"param {path + '.' if path else ''}{missing[0]} was not filled "
                                      f"by the conversion (missing: {missing})")
            if extra:
                raise ConversionError(f"param {path + '.' if path else ''}{extra[0]} is not part of "
                                      f"this architecture (extra: {extra})")
            return {k: walk(got[k], exp[k], f"{path}.{k}" if path else k) for k in exp}
        arr = floating(got, f"param {path}")
        if tuple(arr.shape) != tuple(exp):
            raise ConversionError(f"param {path}: converted tensor has shape {tuple(arr.shape)}, "
                                  f"the config expects {tuple(exp)}")
        return jnp.asarray(arr, dtype=dtype) if cast else got

    return walk(params, want, "")


def floating(x, what: str) -> np.ndarray:
    """x as an array, refusing integer or boolean data (a weight is never an integer: casting
    one would hide a checkpoint that does not hold what its names say)."""
    arr = x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)
    if np.dtype(arr.dtype).kind in "iub":
        raise ConversionError(f"{what} holds {arr.dtype} values; a weight must be floating point "
                              f"(the checkpoint is corrupted or mislabelled)")
    return arr


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
