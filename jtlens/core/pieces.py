"""The pieces of the forward: the context every piece gets (`Ctx`), the embeddings, attention,
the MLP, norms, one block, the scan over layer-stacked blocks, and the unembedding.

Each piece is a pure function of (params, input, ctx); `engine.run_model` strings them together
and `forward` is the public entry point.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from jtlens.core import components as C
from jtlens.core.checks import lookup
from jtlens.core.config import Config
from jtlens.core.decode_layout import FlatMatrix
from jtlens.core.hooks import HookRunner
from jtlens.core.moe import moe_mlp
from jtlens.core.params import Params


Resid = Float[Array, "batch pos d_model"]
QKVInput = Float[Array, "batch pos *head_d_model"]   # the residual, or per-head copies of it
# Token ids, or (with start_at_layer) the residual stream to start from.
TokensOrResid = Union[Int[ArrayLike, "batch pos"], Float[ArrayLike, "batch pos d_model"]]


# ----------------------------------------------------------------------------- context

@dataclasses.dataclass(frozen=True)
class Ctx:
    """What every piece of the forward needs besides its params and input.

    Calling it fires a hook point: `ctx("attn.hook_z", z)` applies the run's edits there and
    records the activation when it is captured. `layer` is a Python int (unrolled run), a traced
    scalar (inside `lax.scan`) or None (outside the blocks); `rec` collects this layer's captures.
    """

    cfg: Config
    hk: HookRunner
    rec: dict
    positions: Any = None         # [batch, pos] position ids (rotary, learned positions)
    mask: Any = None              # [batch, pos] key padding mask, or None
    layer: Any = None
    local: Any = False            # this layer uses a sliding window
    shortformer_pos: Any = None   # [batch, pos, d_model] added to query/key inputs (shortformer)
    kv: Optional["KVSlots"] = None  # past keys/values to attend to (a KeyValueCache run)
    position_bias: Any = None     # [1, heads, q, k] T5 relative position bias of self-attention
    encoder: Any = None           # [batch, enc_pos, d_model] what cross-attention reads (T5)
    encoder_mask: Any = None      # [batch, enc_pos] its padding mask, or None

    def __call__(self, name: str, act: jax.Array) -> jax.Array:
        return self.hk(name, act, self.rec, self.layer)

    def sub(self, prefix: str):
        """The hook callback of a sub-module (a norm) whose hooks sit under `prefix`."""
        return lambda name, act: self(f"{prefix}.{name}", act)

    def wants(self, name: str) -> bool:
        """Whether anything reads or edits this hook point (to skip optional computations)."""
        return self.hk.wants(name)

    def edited(self, name: str) -> bool:
        return self.hk.edited(name)

    def at(self, layer, local, rec: dict, kv: Optional["KVSlots"] = None) -> "Ctx":
        return dataclasses.replace(self, layer=layer, local=local, rec=rec, kv=kv)



@dataclasses.dataclass
class KVSlots:
    """A KeyValueCache as one forward sees it.

    k, v: [n_layers, batch, n_kv_heads, max_len, d_head] for the run (or a tuple of per-layer
    arrays, `KeyValueCache.per_layer`), one layer's [batch, n_kv_heads, max_len, d_head] inside a
    block. at: the slot the chunk is written to. mask: [batch, max_len] real tokens among the
    cached slots and the chunk. Attention leaves the layer's cache with the chunk's keys and
    values written in (k, v: [batch, n_kv_heads, max_len, d_head]) in `new`.
    """

    k: Any
    v: Any
    at: Any
    mask: Any
    new: Any = None
    cross: Any = None  # T5: cross-attention (keys, values), [n_layers, ...] or one layer's

    def layer(self, k, v, *cross) -> "KVSlots":
        return KVSlots(k, v, self.at, self.mask, cross=cross or None)


def norm(p: Optional[dict], kind: Optional[str], x, ctx: Ctx, name: str):
    """The norm `name` (ln1, ln_final, ...) of kind LN/RMS/*Pre/None with its hooks."""
    return C.normalize(x, p, kind, ctx.cfg.eps, ctx.sub(name))


def _post_norm_kind(p: dict) -> str:
    """LN or RMS, read off a norm's params (post-norms keep weights after fold_ln)."""
    return "LN" if "b" in p else "RMS"


# ----------------------------------------------------------------------------- pieces

def embed(params: Params, tokens: Int[Array, "batch pos"], ctx: Ctx) -> Resid:
    """Token (+ absolute position) embedding -> residual [batch, pos, d_model]."""
    cfg = ctx.cfg
    if cfg.use_hook_tokens:
        tokens = ctx("hook_tokens", tokens)
    x = lookup(params["embed"]["W_E"], tokens)
    if cfg.post_embedding_ln:
        x = norm(params["embed"]["ln"], "LN", x, ctx, "embed.ln")
    x = ctx("hook_embed", x)
    if cfg.positional_embedding_type == "standard":
        x = x + ctx("hook_pos_embed", position_embedding(params, ctx))
    return x


def position_embedding(params: Params, ctx: Ctx) -> Resid:
    """W_pos at each position [batch, pos, d_model], zero on left padding."""
    pos = jnp.take(params["pos_embed"]["W_pos"], ctx.positions, axis=0)
    if ctx.mask is not None:
        pos = jnp.where(ctx.mask[..., None] == 0, 0, pos).astype(pos.dtype)
    return pos


def encoder_embed(params: Params, tokens: Int[Array, "batch pos"],
                  token_type_ids: Optional[Int[Array, "batch pos"]], ctx: Ctx) -> Resid:
    """BERT embedding: LayerNorm(token + position + token-type) -> [batch, pos, d_model].

    Positions are 0..pos-1 whatever the padding, as in Hugging Face and TransformerLens.
    """
    x = ctx("embed.hook_embed", lookup(params["embed"]["W_E"], tokens))
    pos = jnp.broadcast_to(params["pos_embed"]["W_pos"][: tokens.shape[1]], x.shape)
    x = x + ctx("embed.hook_pos_embed", pos)
    if ctx.cfg.n_token_types:
        types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
        x = x + ctx("embed.hook_token_type_embed",
                    lookup(params["token_type_embed"]["W_token_type"], types))
    return ctx("hook_full_embed", norm(params["embed"]["ln"], "LN", x, ctx, "embed.ln"))


def _mm(x, W):
    """x [..., in] times W [in, out] (or a `FlatMatrix`) -> [..., out]."""
    return W(x) if isinstance(W, FlatMatrix) else x @ W


def _project(x, W, b):
    """[b, p, d] or per-head [b, p, h, d] inputs times W [h, d, e] -> [b, p, h, e]."""
    if isinstance(W, FlatMatrix):
        if x.ndim == 3:
            return W(x) + b
        W = W.unflattened()
    return jnp.einsum("bpd,hde->bphe" if x.ndim == 3 else "bphd,hde->bphe", x, W) + b


def _out_project(z, W_O, per_head: bool):
    """z [b, q, h, d_head] times W_O [h, d_head, m] -> [b, q, m], or each head's share
    [b, q, h, m]."""
    if isinstance(W_O, FlatMatrix):
        if not per_head:
            return W_O(z)
        W_O = W_O.unflattened()
    if per_head:
        return jnp.einsum("bqhd,hdm->bqhm", z, W_O)
    # Heads and d_head are W_O's leading axes, so this product reads W_O as it is stored.
    return z.reshape(z.shape[:2] + (-1,)) @ W_O.reshape(-1, W_O.shape[-1])


def attention(p: dict, q_in: QKVInput, k_in: QKVInput, v_in: QKVInput, ctx: Ctx,
              cross: bool = False) -> Resid:
    """Multi-/grouped-query attention with every TransformerLens hook; returns [b, p, d_model].

    `cross`: a T5 decoder's cross-attention (hooks `cross_attn.*`): keys and values come from
    the encoder output, every encoder position is visible but its padding, no position bias.
    """
    cfg = ctx.cfg
    name = "cross_attn" if cross else "attn"
    hook = lambda n, x: ctx(f"{name}.{n}", x)  # noqa: E731
    q = hook("hook_q", _project(q_in, p["W_Q"], p["b_Q"]))
    if cross and ctx.kv is not None and ctx.kv.cross is not None:
        k, v = ctx.kv.cross  # the encoder output's, projected once for every decode step
    else:
        k, v = _project(k_in, p["W_K"], p["b_K"]), _project(v_in, p["W_V"], p["b_V"])
    G = cfg.n_kv_heads  # key/value heads the attention reads
    if cfg.ungroup_grouped_query_attention and G != cfg.n_heads:
        if ctx.kv is not None:
            raise ValueError("ungroup_grouped_query_attention=True with a KV cache: the cache "
                             "holds the grouped keys; run without the flag to use one")
        # query head h reads kv head h // group: repeat each kv head over its group
        k, v = (jnp.repeat(x, cfg.n_heads // G, axis=2) for x in (k, v))
        G = cfg.n_heads
    k, v = hook("hook_k", k), hook("hook_v", v)
    if cfg.use_qk_norm or cfg.qk_norm_over_heads:
        # TransformerLens normalises q/k flattened to [batch*pos*heads, d_head] (per head) or
        # [batch, pos, heads*d_head] (over heads); its hooks see that shape.
        flat = (lambda x: x.reshape(x.shape[:2] + (-1,))) if cfg.qk_norm_over_heads else (
            lambda x: x.reshape(-1, cfg.d_head))
        q = norm(p["q_norm"], "RMS", flat(q), ctx, "attn.q_norm").reshape(q.shape)
        k = norm(p["k_norm"], "RMS", flat(k), ctx, "attn.k_norm").reshape(k.shape)
    if cfg.clip_qkv is not None:
        q, k, v = (jnp.clip(x, -cfg.clip_qkv, cfg.clip_qkv) for x in (q, k, v))
    if cfg.positional_embedding_type == "rotary":
        q = ctx("attn.hook_rot_q", C.apply_rotary(q, ctx.positions, cfg, ctx.local))
        k = ctx("attn.hook_rot_k", C.apply_rotary(k, ctx.positions, cfg, ctx.local))
    q_idx, k_idx = jnp.arange(q.shape[1]), jnp.arange(k.shape[1])  # slots of the queries and keys
    mask = ctx.encoder_mask if cross else ctx.mask
    if ctx.kv is not None and not cross:
        k, v, k_idx, mask = _with_past(ctx.kv, k, v)
        q_idx = ctx.kv.at + q_idx
    if q.dtype not in (jnp.float32, jnp.float64):
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    # Query head h reads key/value head h // group: split the query heads into [kv head, group]
    # rather than repeating the keys and values (a copy of the whole cache per step).
    b, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    by_group = lambda x: x.reshape(b, G, cfg.n_heads // G, n_q, n_k)  # noqa: E731
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
        scale = scale * (ctx.layer + 1)
    q_grouped = q.reshape(b, n_q, G, cfg.n_heads // G, cfg.d_head)
    scores = jnp.einsum("bqgrd,bkgd->bgrqk", q_grouped, k).reshape(b, cfg.n_heads, n_q, n_k) / scale
    scores = C.softcap(scores, cfg.attn_scores_soft_cap)
    if cfg.positional_embedding_type == "alibi":
        scores = scores + C.alibi_bias(cfg.n_heads, q_idx, k_idx)
    if ctx.position_bias is not None and not cross:
        scores = scores + ctx.position_bias
    allowed = C.attention_mask_matrix(cfg, q_idx, k_idx, mask, ctx.local, causal=not cross)
    scores = hook("hook_attn_scores", jnp.where(allowed, scores, -jnp.inf))
    # A query with no key left (every score -inf: a left-padding row) attends to nothing, as in
    # TransformerLens. Unlike TransformerLens's isnan-to-zero, a NaN score (a NaN weight or
    # input) stays NaN, so it reaches the logits as it does in Hugging Face.
    no_keys = jnp.all(scores == -jnp.inf, axis=-1, keepdims=True)
    if cfg.use_attention_sinks:  # each head's sink logit is one more key, dropped after the softmax
        sink = jnp.broadcast_to(p["sinks"].astype(scores.dtype)[None, :, None, None],
                                scores.shape[:-1] + (1,))
        pattern = jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1]
    else:
        pattern = jnp.where(no_keys, 0.0, jax.nn.softmax(scores, axis=-1))
    pattern = hook("hook_pattern", pattern).astype(v.dtype)
    z = hook("hook_z", jnp.einsum("bgrqk,bkgd->bqgrd", by_group(pattern), v).reshape(
        b, n_q, cfg.n_heads, cfg.d_head))
    if cfg.use_attn_result or ctx.wants(f"{name}.hook_result"):
        result = hook("hook_result", _out_project(z, p["W_O"], per_head=True))
        if ctx.edited(f"{name}.hook_result"):
            return result.sum(2) + p["b_O"]
    return _out_project(z, p["W_O"], per_head=False) + p["b_O"]


def cross_keys_values(blocks: Params, encoded) -> tuple:
    """Every decoder layer's cross-attention keys and values of the encoder output `encoded`
    [batch, enc_pos, d_model], before their hooks: two [n_layers, batch, enc_pos, n_heads, d_head]
    (a KeyValueCache's `cross`)."""
    return jax.vmap(lambda p: (_project(encoded, p["W_K"], p["b_K"]),
                               _project(encoded, p["W_V"], p["b_V"])))(blocks["cross_attn"])


def _with_past(kv: KVSlots, k, v):
    """The chunk's keys/values [b, p, h_kv, d] written into the layer's cache at slot `kv.at`.

    Returns keys and values over every slot [b, max_len, h_kv, d], the key slot indices and the
    key mask [b, max_len]; causal masking by slot hides the empty slots after the chunk.
    """
    write = lambda past, x: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
        past, jnp.swapaxes(x, 1, 2).astype(past.dtype), kv.at, axis=2)
    kv.new = (write(kv.k, k), write(kv.v, v))
    k_all, v_all = (jnp.swapaxes(x, 1, 2) for x in kv.new)
    return k_all, v_all, jnp.arange(k_all.shape[1]), kv.mask


def mlp(p: dict, x: Resid, ctx: Ctx) -> Resid:
    """Plain or gated MLP with hook_pre / hook_pre_linear / hook_post (or the MoE MLP)."""
    if ctx.cfg.num_experts:
        return moe_mlp(p, x, ctx)
    if ctx.cfg.act_fn == "xielu":  # an activation with parameters of its own, per layer
        act = lambda x: C.xielu(x, **p["act_fn"])  # noqa: E731
    else:
        act = C.ACTIVATION_FNS[ctx.cfg.act_fn]
    if ctx.cfg.gated_mlp:
        pre = ctx("mlp.hook_pre", _mm(x, p["W_gate"]))
        pre_linear = ctx("mlp.hook_pre_linear", _mm(x, p["W_in"]))
        post = ctx("mlp.hook_post", act(pre) * pre_linear + p["b_in"])
    elif ctx.cfg.is_layer_norm_activation():
        # solu_ln: a LayerNorm over d_mlp after the activation (LNPre once fold_ln moved its
        # weights into W_out), with hook_mid before it.
        mid = ctx("mlp.hook_mid", act(ctx("mlp.hook_pre", _mm(x, p["W_in"]) + p["b_in"])))
        post = ctx("mlp.hook_post", norm(p.get("ln"), "LN" if "ln" in p else "LNPre", mid, ctx,
                                         "mlp.ln"))
    else:
        post = ctx("mlp.hook_post", act(ctx("mlp.hook_pre", _mm(x, p["W_in"]) + p["b_in"])))
    return _mm(post, p["W_out"]) + p["b_out"]


_QKV_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")


def attention_inputs(resid, ctx: Ctx, has_attn_in: bool = True):
    """(q, k, v) inputs before ln1, as TransformerLens builds them.

    Normally the residual itself. In split mode (use_split_qkv_input, or a q/k/v_input hook is
    edited) each head gets its own copy [batch, pos, heads, d_model] with its own hook; in
    attn_in mode (use_attn_in, or hook_attn_in is edited) one per-head copy feeds q, k and v.
    `has_attn_in=False` for blocks without TransformerLens's hook_attn_in (BERT's).
    """
    cfg = ctx.cfg
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    per_head = lambda n: jnp.broadcast_to(resid[:, :, None, :], resid.shape[:2] + (n, cfg.d_model))
    split = cfg.use_split_qkv_input or any(ctx.edited(n) for n in _QKV_INPUTS)
    attn_in_mode = has_attn_in and (cfg.use_attn_in or ctx.edited("hook_attn_in"))
    if has_attn_in and (cfg.use_attn_in or ctx.wants("hook_attn_in")) and (split or not attn_in_mode):
        ctx("hook_attn_in", per_head(H))  # recorded; TransformerLens ignores it here too
    if split:
        return tuple(ctx(name, per_head(n)) for name, n in zip(_QKV_INPUTS, (H, Hkv, Hkv)))
    if attn_in_mode:
        if Hkv != H:
            raise ValueError("hook_attn_in feeds keys and values per query head, which a grouped-query "
                             "model does not have; edit hook_k_input / hook_v_input instead")
        attn_in = ctx("hook_attn_in", per_head(H))
    for name, n in zip(_QKV_INPUTS, (H, Hkv, Hkv)):
        if ctx.wants(name):
            ctx(name, per_head(n))  # recorded only
    return (attn_in,) * 3 if attn_in_mode else (resid,) * 3


def _mlp_in(x, ctx: Ctx):
    return ctx("hook_mlp_in", x) if ctx.cfg.use_hook_mlp_in or ctx.wants("hook_mlp_in") else x


def block(p: dict, resid: Resid, ctx: Ctx) -> Resid:
    """One pre-norm block: x += attn(ln1(x)); x += mlp(ln2(x)) (parallel: both read x).
    With norm_sublayer_outputs (OLMo 2): x += ln1(attn(x)); x += ln2(mlp(x))."""
    cfg = ctx.cfg

    def ln(name, x, on_output: bool):
        """The norm `name` applied to a sublayer's input or output, whichever side it sits on."""
        if on_output != cfg.norm_sublayer_outputs:
            return x
        return norm(p.get(name), cfg.normalization_type, x, ctx, name)

    ln1 = lambda x: ln("ln1", x, False)  # noqa: E731
    resid = ctx("hook_resid_pre", resid)
    q_in, k_in, v_in = attention_inputs(resid, ctx)
    q_in, k_in, v_in = (ln1(resid),) * 3 if q_in is resid else (ln1(q_in), ln1(k_in), ln1(v_in))
    if ctx.shortformer_pos is not None:  # positions reach queries and keys only
        q_in = q_in + (ctx.shortformer_pos if q_in.ndim == 3 else ctx.shortformer_pos[:, :, None])
        k_in = k_in + (ctx.shortformer_pos if k_in.ndim == 3 else ctx.shortformer_pos[:, :, None])
    attn_out = ln("ln1", attention(p["attn"], q_in, k_in, v_in, ctx), True)
    if cfg.use_normalization_before_and_after:
        attn_out = norm(p["ln1_post"], _post_norm_kind(p["ln1_post"]), attn_out, ctx, "ln1_post")
    attn_out = ctx("hook_attn_out", attn_out)
    if cfg.attn_only:
        return ctx("hook_resid_post", resid + attn_out)
    mid = resid if cfg.parallel_attn_mlp else ctx("hook_resid_mid", resid + attn_out)
    mlp_norm = "ln2"
    if cfg.cross_attention:
        mid, mlp_norm = _cross_attention(p, mid, ctx), "ln3"
    mlp_out = ln(mlp_norm, mlp(p["mlp"], ln(mlp_norm, _mlp_in(mid, ctx), False), ctx), True)
    if cfg.use_normalization_before_and_after:
        mlp_out = norm(p["ln2_post"], _post_norm_kind(p["ln2_post"]), mlp_out, ctx, "ln2_post")
    mlp_out = ctx("hook_mlp_out", mlp_out)
    return ctx("hook_resid_post", (resid + attn_out if cfg.parallel_attn_mlp else mid) + mlp_out)


def _cross_attention(p: dict, mid: Resid, ctx: Ctx) -> Resid:
    """A T5 decoder block's middle sublayer: x + cross_attn(ln2(x), encoder output), returned
    as hook_resid_mid_cross (TransformerLens's T5Block)."""
    cfg = ctx.cfg
    x = ctx("hook_cross_attn_in", mid) if cfg.use_attn_in or ctx.wants("hook_cross_attn_in") else mid
    q_in = norm(p["ln2"], cfg.normalization_type, x, ctx, "ln2")
    out = attention(p["cross_attn"], q_in, ctx.encoder, ctx.encoder, ctx, cross=True)
    return ctx("hook_resid_mid_cross", mid + ctx("hook_cross_attn_out", out))


def post_ln_block(p: dict, resid: Resid, ctx: Ctx) -> Resid:
    """A BERT block (TransformerLens's BertBlock): LayerNorm after each residual add.

    ln1 normalises resid_mid, which feeds the MLP and the second residual add; hook_resid_post
    is before ln2 and the block returns hook_normalized_resid_post.
    """
    resid = ctx("hook_resid_pre", resid)
    attn_out = ctx("hook_attn_out", attention(p["attn"], *attention_inputs(resid, ctx, False), ctx))
    mid = _mlp_in(ctx("hook_resid_mid", resid + attn_out), ctx)
    x = norm(p["ln1"], "LN", mid, ctx, "ln1")
    resid_post = ctx("hook_resid_post", x + ctx("hook_mlp_out", mlp(p["mlp"], x, ctx)))
    return ctx("hook_normalized_resid_post", norm(p["ln2"], "LN", resid_post, ctx, "ln2"))


def local_layers(cfg: Config) -> list[bool]:
    """Per layer, whether its attention is a sliding window. attn_types counts only with
    use_local_attn, as in TransformerLens (OLMo 3 sets it without)."""
    return [cfg.use_local_attn and t == "local" for t in (cfg.attn_types or ("global",) * cfg.n_layers)]


def run_blocks(blocks: Params, resid: Resid, ctx: Ctx, first_layer: int = 0, start_layer=None,
               scan: bool = True) -> tuple[Resid, dict]:
    """Run stacked blocks, under `lax.scan` or unrolled.

    Args:
      blocks: params["blocks"], possibly sliced to a layer range starting at `first_layer`:
        layer-stacked, or a tuple of per-layer dicts (`decode_layout`), which always runs unrolled.
      ctx: the run's context (its layer, local and rec are set per block).
      start_layer: optional traced layer index; layers before it are skipped (`lax.cond`), so a
        sweep can start from a cached residual without recompiling per layer.
      scan: False unrolls the layers in Python, so hook functions see the layer as a Python int
        and an eager (un-jitted) run needs no compilation (TransformerLens-style hook loops).
    Returns (resid, {template: [n_layers_run, ...]}). With a KeyValueCache run (`ctx.kv`, every
    layer), the records also hold "kv": the extended cache's (keys, values), each
    [n_layers, batch, n_kv_heads, max_len, d_head], or tuples of per-layer arrays when the
    cache came per layer (which always runs unrolled).
    """
    cfg = ctx.cfg
    layers = blocks if isinstance(blocks, (tuple, list)) else None
    n = len(layers) if layers is not None else jax.tree_util.tree_leaves(blocks)[0].shape[0]
    local = local_layers(cfg)
    block_fn = post_ln_block if cfg.post_ln else block
    past = () if ctx.kv is None else (ctx.kv.k, ctx.kv.v) + (ctx.kv.cross or ())
    per_layer_kv = bool(past) and isinstance(past[0], tuple)

    def one(p, x, layer, is_local, *layer_past):
        rec: dict = {}
        kv = ctx.kv.layer(*layer_past) if layer_past else None
        x = block_fn(p, x, ctx.at(layer, is_local, rec, kv))
        return x, (rec if kv is None else dict(rec, kv=kv.new))

    if not scan or layers is not None or per_layer_kv:
        records = []
        for i in range(n):
            l = first_layer + i
            p = layers[i] if layers is not None else jax.tree_util.tree_map(lambda a: a[i], blocks)
            resid, rec = one(p, resid, l, local[l], *(x[i] for x in past))
            records.append(rec)
        kv = [r.pop("kv") for r in records] if per_layer_kv else None
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *records) if n else {}
        return resid, stacked if kv is None else dict(stacked, kv=tuple(zip(*kv)))
    local = jnp.asarray(local)

    def body(x, inputs):
        p, l, *layer_past = inputs
        run = lambda x: one(p, x, l, local[l], *layer_past)
        if start_layer is None:
            return run(x)
        skipped = jax.eval_shape(run, x)[1]
        return jax.lax.cond(l >= start_layer, run,
                            lambda x: (x, jax.tree_util.tree_map(
                                lambda s: jnp.zeros(s.shape, s.dtype), skipped)), x)

    return jax.lax.scan(body, resid, (blocks, jnp.arange(first_layer, first_layer + n)) + past)


def final_norm(params: Params, resid: Resid, ctx: Ctx) -> Resid:
    """ln_final (with its hooks), or the residual itself for norm-free models."""
    return norm(params.get("ln_final"), ctx.cfg.final_norm_type, resid, ctx, "ln_final")


def mlm_head(params: Params, resid: Resid, ctx: Ctx) -> Resid:
    """BERT's masked-LM transform (dense, act_fn, LayerNorm) -> [batch, pos, d_model]."""
    p = params["mlm_head"]
    x = C.ACTIVATION_FNS[ctx.cfg.act_fn](resid @ p["W"] + p["b"])
    return norm(p["ln"], "LN", x, ctx, "mlm_head.ln")


def unembed(params: Params, resid: Float[Array, "batch pos d_model"],
            ctx: Ctx) -> Float[Array, "batch pos d_vocab_out"]:
    """ln_final (BERT: the MLM head) + unembed (+ final logit soft-cap) -> logits [batch, pos, d_vocab_out]."""
    head = mlm_head if ctx.cfg.mlm_head else final_norm
    resid = head(params, resid, ctx)
    if ctx.cfg.scale_decoder_outputs:
        resid = resid * ctx.cfg.d_model ** -0.5
    resid = ctx("unembed.hook_in", resid)
    logits = ctx("unembed.hook_out", _mm(resid, params["unembed"]["W_U"]) + params["unembed"]["b_U"])
    return C.softcap(logits, ctx.cfg.output_logits_soft_cap)
