"""Transcoders as data: one per MLP, stacked over layers (or one cross-layer transcoder, CLT).

    tc = Transcoders.init(TranscoderConfig(n_layers=2, d_in=32, d_transcoder=128), key)
    acts = tc.encode(mlp_in)                # [n_layers, ..., d_in] -> [n_layers, ..., d_transcoder]
    mlp_out_hat = tc.decode(acts, mlp_in)   # -> [n_layers, ..., d_out] (mlp_in feeds W_skip)

A transcoder reads the MLP's input (`blocks.L.<input_hook>`, default `ln2.hook_normalized`) and
predicts its output (`blocks.L.<output_hook>`, default `hook_mlp_out`). Tensor names and
orientation are SAELens's, with a leading layer axis: W_enc [L, d_in, d_tc], b_enc [L, d_tc],
W_dec [L, d_tc, d_out], b_dec [L, d_out], threshold [L, d_tc] (jumprelu), W_skip [L, d_out, d_in]
(skip transcoders: out += x @ W_skip.T). A CLT's decoder is W_dec [L_src, d_tc, L_out, d_out]:
a feature of layer s writes to the MLP output of every layer t >= s (entries t < s are zero).
Activations follow SAELens (JumpReLU and TopK keep only positive values); circuit-tracer's
JumpReLU and TopK also pass negative pre-activations (below a negative threshold, or among the
top k when fewer than k are positive), which trained transcoders rarely meet.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jtlens.experiments.sparse.sae import jumprelu, topk_relu

ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclasses.dataclass(frozen=True)
class TranscoderConfig:
    """What is static about a set of transcoders (hashable: a jit static argument).

    n_layers: one transcoder per layer (a CLT: one encoder per layer). d_in / d_out: the widths
    read and written (d_out defaults to d_in). activation: relu, jumprelu or topk (with k).
    skip: an affine skip path W_skip. cross_layer: a CLT. input_hook / output_hook: the hook
    names inside a block that the transcoders read and replace. scan: circuit-tracer's
    identifier of the transcoder set (goes into graph files).
    """

    n_layers: int
    d_in: int
    d_transcoder: int
    d_out: Optional[int] = None
    activation: str = "relu"
    k: Optional[int] = None
    skip: bool = False
    cross_layer: bool = False
    input_hook: str = "ln2.hook_normalized"
    output_hook: str = "hook_mlp_out"
    scan: Optional[str] = None

    def __post_init__(self):
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: use one of {ACTIVATIONS}")
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= self.d_transcoder):
            raise ValueError(f"a topk transcoder needs an integer k in 1..d_transcoder="
                             f"{self.d_transcoder}; got k={self.k!r}")
        for name in ("input_hook", "output_hook"):
            if getattr(self, name).startswith("blocks."):
                raise ValueError(f"{name}={getattr(self, name)!r}: give the name inside a block "
                                 f"(e.g. 'ln2.hook_normalized'); the layer comes from the stack")

    def replace(self, **changes) -> "TranscoderConfig":
        return dataclasses.replace(self, **changes)


def param_shapes(cfg: TranscoderConfig) -> dict[str, tuple]:
    """name -> shape of every stacked tensor of transcoders of `cfg`."""
    L, i, f, o = cfg.n_layers, cfg.d_in, cfg.d_transcoder, cfg.d_out
    shapes = {"W_enc": (L, i, f), "b_enc": (L, f),
              "W_dec": (L, f, L, o) if cfg.cross_layer else (L, f, o), "b_dec": (L, o)}
    if cfg.activation == "jumprelu":
        shapes["threshold"] = (L, f)
    if cfg.skip:
        shapes["W_skip"] = (L, o, i)
    return shapes


def clt_mask(n_layers: int) -> jax.Array:
    """[L_src, L_out] True where a CLT feature of layer s may write to layer t (t >= s)."""
    return jnp.arange(n_layers)[:, None] <= jnp.arange(n_layers)[None, :]


@dataclasses.dataclass(frozen=True)
class Transcoders:
    """Per-layer transcoders (or a CLT): `params` (stacked arrays, leaves) and a static `cfg`."""

    params: dict
    cfg: TranscoderConfig

    @classmethod
    def init(cls, cfg: TranscoderConfig, key: jax.Array, scale: float = 1.0) -> "Transcoders":
        """Random transcoders: Kaiming-uniform W_enc and W_dec (as SAELens initialises them),
        times `scale`; zero biases, thresholds and skips."""
        params = {n: jnp.zeros(s, jnp.float32) for n, s in param_shapes(cfg).items()}
        k_enc, k_dec = jax.random.split(key)
        for name, k, fan_in in (("W_enc", k_enc, cfg.d_in), ("W_dec", k_dec, cfg.d_transcoder)):
            bound = scale * (6.0 / fan_in) ** 0.5
            params[name] = jax.random.uniform(k, params[name].shape, jnp.float32, -bound, bound)
        return cls(_masked(params, cfg), cfg)

    def __getattr__(self, name: str):
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"Transcoders has no attribute {name!r}")

    def layer(self, i: int) -> dict:
        """Layer i's tensors (a CLT's W_dec row: [d_tc, L_out, d_out])."""
        return {n: a[i] for n, a in self.params.items()}

    # ------------------------------------------------------------------ the computation
    def pre_acts(self, x: Float[Array, "L *rest d_in"]) -> Float[Array, "L *rest d_tc"]:
        """x @ W_enc + b_enc per layer."""
        flat = self._flat(x, self.cfg.d_in)
        pre = jnp.einsum("lni,lif->lnf", flat, self.params["W_enc"]) + self.params["b_enc"][:, None]
        return pre.reshape(x.shape[:-1] + (self.cfg.d_transcoder,))

    def activate(self, pre: Float[Array, "L *rest d_tc"]) -> Float[Array, "L *rest d_tc"]:
        """The activation function on pre-activations [L, ..., d_tc]."""
        thr = self.params.get("threshold")
        if thr is not None:
            thr = thr.reshape((self.cfg.n_layers,) + (1,) * (pre.ndim - 2) + (-1,))
        return self._act(pre, thr)

    def _act(self, pre, threshold):
        if self.cfg.activation == "relu":
            return jax.nn.relu(pre)
        if self.cfg.activation == "topk":
            return topk_relu(pre, self.cfg.k)
        return jumprelu(pre, threshold)

    def encode_at(self, x: Float[Array, "*rest d_in"], layer: int) -> Float[Array, "*rest d_tc"]:
        """Layer `layer`'s feature activations of its MLP input x [..., d_in]."""
        p = self.layer(layer)
        return self._act(x @ p["W_enc"] + p["b_enc"], p.get("threshold"))

    def write_at(self, acts: Float[Array, "*rest d_tc"], layer: int):
        """What layer `layer`'s features write, without b_dec: [..., d_out], or for a CLT the
        writes to every layer [L_out, ..., d_out] (zero before `layer`)."""
        W = self.params["W_dec"][layer]
        return jnp.einsum("...f,fto->t...o", acts, W) if self.cfg.cross_layer else acts @ W

    def encode(self, x: Float[Array, "L *rest d_in"]) -> Float[Array, "L *rest d_tc"]:
        """Feature activations [L, ..., d_tc] of each layer's MLP input x [L, ..., d_in]."""
        return self.activate(self.pre_acts(x))

    def decode(self, acts: Float[Array, "L *rest d_tc"],
               x: Optional[Float[Array, "L *rest d_in"]] = None) -> Float[Array, "L *rest d_out"]:
        """Each layer's MLP-output reconstruction [L, ..., d_out]; `x` (the MLP inputs) is needed
        for the skip path."""
        cfg, p = self.cfg, self.params
        flat = self._flat(acts, cfg.d_transcoder)
        eq = "snf,sfto->tno" if cfg.cross_layer else "lnf,lfo->lno"
        out = jnp.einsum(eq, flat, p["W_dec"]) + p["b_dec"][:, None]
        if cfg.skip:
            if x is None:
                raise ValueError("these transcoders have a skip path (W_skip): decode(acts, x) "
                                 "needs the MLP inputs x")
            out = out + self.skip(x).reshape(out.shape)
        return out.reshape(acts.shape[:-1] + (cfg.d_out,))

    def skip(self, x: Float[Array, "L *rest d_in"]) -> Float[Array, "L *rest d_out"]:
        """The skip path x @ W_skip.T per layer (zeros without one)."""
        flat = self._flat(x, self.cfg.d_in)
        if not self.cfg.skip:
            return jnp.zeros(x.shape[:-1] + (self.cfg.d_out,), x.dtype)
        out = jnp.einsum("lni,loi->lno", flat, self.params["W_skip"])
        return out.reshape(x.shape[:-1] + (self.cfg.d_out,))

    def __call__(self, x: Float[Array, "L *rest d_in"]) -> Float[Array, "L *rest d_out"]:
        return self.decode(self.encode(x), x)

    def _flat(self, x, width: int):
        if x.ndim < 2 or x.shape[0] != self.cfg.n_layers or x.shape[-1] != width:
            raise ValueError(f"expected [n_layers={self.cfg.n_layers}, ..., {width}]; got shape "
                             f"{tuple(x.shape)}")
        return x.reshape(x.shape[0], -1, width)


def fold_input_norm(tc: Transcoders, weight, bias=None) -> Transcoders:
    """Transcoders that read a norm's output `n * weight + bias` (weight, bias [L, d_in]; e.g.
    circuit-tracer's `mlp.hook_in` on a model loaded without fold_ln), rewritten to read the
    normalised `n` alone: jtlens's `ln2.hook_normalized` on a model loaded with fold_ln, which
    moved ln2's weight and bias into the MLP. Take them from the unfolded model:
    `HookedTransformer.from_pretrained(name, fold_ln=False).params["blocks"]["ln2"]` ("w", "b";
    RMSNorm has no bias). Encoder rows and skip columns scale by the weight; the bias moves
    into b_enc (and through the skip path into b_dec), so every output is unchanged."""
    p, L, d_in = tc.params, tc.cfg.n_layers, tc.cfg.d_in
    weight = jnp.asarray(weight)
    if weight.shape != (L, d_in) or (bias is not None and jnp.shape(bias) != (L, d_in)):
        raise ValueError(f"the norm's weight and bias must be [n_layers, d_in] = {(L, d_in)}; got "
                         f"{tuple(weight.shape)} and {None if bias is None else jnp.shape(bias)}")
    new = dict(p, W_enc=p["W_enc"] * weight[:, :, None])
    if bias is not None:
        new["b_enc"] = p["b_enc"] + jnp.einsum("li,lif->lf", bias, p["W_enc"])
    if tc.cfg.skip:
        new["W_skip"] = p["W_skip"] * weight[:, None, :]
        if bias is not None:
            new["b_dec"] = p["b_dec"] + jnp.einsum("li,loi->lo", bias, p["W_skip"])
    return Transcoders(new, tc.cfg)


def _masked(params: dict, cfg: TranscoderConfig) -> dict:
    """A CLT's decoder with the entries that would write to earlier layers zeroed."""
    if not cfg.cross_layer:
        return params
    keep = clt_mask(cfg.n_layers)[:, None, :, None]
    return {**params, "W_dec": jnp.where(keep, params["W_dec"], 0.0)}


jax.tree_util.register_dataclass(Transcoders, data_fields=("params",), meta_fields=("cfg",))
