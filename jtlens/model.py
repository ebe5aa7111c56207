"""The forward: embed -> lax.scan over layer-stacked blocks -> unembed, one function for all families.

`forward(params, tokens, cfg, hooks)` is pure: jit it with `cfg` static, vmap it over patch
values or masks, differentiate it with respect to `add` deltas or params.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jtlens import components as C
from jtlens.cache import ActivationCache
from jtlens.checks import check_attention_mask, check_tokens, ids_in_range, layer_range, lookup
from jtlens.config import Config
from jtlens.hooks import HookRunner, Hooks
from jtlens.params import Params


# ----------------------------------------------------------------------------- pieces

def _sub(hk: HookRunner, rec: dict, prefix: str, layer=None):
    """A hook callback for a sub-module (e.g. a norm) whose hooks sit under `prefix`."""
    return lambda name, act: hk(f"{prefix}.{name}", act, rec, layer)


def embed(params: Params, tokens, cfg: Config, hk: HookRunner, rec: dict, positions, attention_mask):
    """Token (+ absolute position) embedding -> residual [batch, pos, d_model]."""
    if "hook_tokens" in hk.captured or hk.edited("hook_tokens"):
        tokens = hk("hook_tokens", tokens, rec)
    x = hk("hook_embed", lookup(params["embed"]["W_E"], tokens), rec)
    if cfg.positional_embedding_type == "standard":
        pos = jnp.take(params["pos_embed"]["W_pos"], positions, axis=0)
        if attention_mask is not None:
            pos = jnp.where(attention_mask[..., None] == 0, 0, pos).astype(pos.dtype)
        x = x + hk("hook_pos_embed", pos, rec)
    return x


def encoder_embed(params: Params, tokens, cfg: Config, hk: HookRunner, rec: dict, token_type_ids):
    """BERT embedding: LayerNorm(token + position + token-type) -> [batch, pos, d_model].

    Positions are 0..pos-1 whatever the padding, as in Hugging Face and TransformerLens.
    """
    x = hk("embed.hook_embed", lookup(params["embed"]["W_E"], tokens), rec)
    pos = jnp.broadcast_to(params["pos_embed"]["W_pos"][: tokens.shape[1]], x.shape)
    x = x + hk("embed.hook_pos_embed", pos, rec)
    if cfg.n_token_types:
        types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
        x = x + hk("embed.hook_token_type_embed",
                   lookup(params["token_type_embed"]["W_token_type"], types), rec)
    x = C.normalize(x, params["embed"]["ln"], "LN", cfg.eps, _sub(hk, rec, "embed.ln"))
    return hk("hook_full_embed", x, rec)


def _project(x, W, b):
    """[b, p, d] or per-head [b, p, h, d] inputs times W [h, d, e] -> [b, p, h, e]."""
    spec = "bpd,hde->bphe" if x.ndim == 3 else "bphd,hde->bphe"
    return jnp.einsum(spec, x, W) + b


def attention(p, q_in, k_in, v_in, cfg: Config, hk: HookRunner, rec, layer, positions, mask, local):
    """Multi-/grouped-query attention with every TransformerLens hook; returns [b, p, d_model]."""
    q = hk("attn.hook_q", _project(q_in, p["W_Q"], p["b_Q"]), rec, layer)
    k = hk("attn.hook_k", _project(k_in, p["W_K"], p["b_K"]), rec, layer)
    v = hk("attn.hook_v", _project(v_in, p["W_V"], p["b_V"]), rec, layer)
    if cfg.use_qk_norm:
        # TransformerLens normalises q/k flattened to [batch*pos*heads, d_head]; its hooks see that shape.
        q = C.normalize(q.reshape(-1, cfg.d_head), p["q_norm"], "RMS", cfg.eps,
                        _sub(hk, rec, "attn.q_norm", layer)).reshape(q.shape)
        k = C.normalize(k.reshape(-1, cfg.d_head), p["k_norm"], "RMS", cfg.eps,
                        _sub(hk, rec, "attn.k_norm", layer)).reshape(k.shape)
    if cfg.positional_embedding_type == "rotary":
        q = hk("attn.hook_rot_q", C.apply_rotary(q, positions, cfg), rec, layer)
        k = hk("attn.hook_rot_k", C.apply_rotary(k, positions, cfg), rec, layer)
    if q.dtype not in (jnp.float32, jnp.float64):
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    group = cfg.n_heads // cfg.n_kv_heads
    if group > 1:
        k = jnp.repeat(k, group, axis=2)
        v_full = jnp.repeat(v, group, axis=2)
    else:
        v_full = v
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
        scale = scale * (layer + 1)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale
    scores = C.softcap(scores, cfg.attn_scores_soft_cap)
    n_pos = scores.shape[-1]
    idx = jnp.arange(n_pos)
    if cfg.positional_embedding_type == "alibi":
        scores = scores + C.alibi_bias(cfg.n_heads, idx, idx)
    scores = jnp.where(C.attention_mask_matrix(cfg, idx, idx, mask, local), scores, -jnp.inf)
    scores = hk("attn.hook_attn_scores", scores, rec, layer)
    pattern = jax.nn.softmax(scores, axis=-1)
    pattern = jnp.where(jnp.isnan(pattern), 0.0, pattern)
    pattern = hk("attn.hook_pattern", pattern, rec, layer).astype(v.dtype)
    z = hk("attn.hook_z", jnp.einsum("bhqk,bkhd->bqhd", pattern, v_full), rec, layer)
    if hk.wants("attn.hook_result"):
        result = hk("attn.hook_result", jnp.einsum("bqhd,hdm->bqhm", z, p["W_O"]), rec, layer)
        if hk.edited("attn.hook_result"):
            return result.sum(2) + p["b_O"]
    return jnp.einsum("bqhd,hdm->bqm", z, p["W_O"]) + p["b_O"]


def mlp(p, x, cfg: Config, hk: HookRunner, rec, layer):
    """Plain or gated MLP with hook_pre / hook_pre_linear / hook_post."""
    act = C.ACTIVATION_FNS[cfg.act_fn]
    if cfg.gated_mlp:
        pre = hk("mlp.hook_pre", x @ p["W_gate"], rec, layer)
        pre_linear = hk("mlp.hook_pre_linear", x @ p["W_in"], rec, layer)
        post = hk("mlp.hook_post", act(pre) * pre_linear + p["b_in"], rec, layer)
    else:
        pre = hk("mlp.hook_pre", x @ p["W_in"] + p["b_in"], rec, layer)
        post = hk("mlp.hook_post", act(pre), rec, layer)
    return post @ p["W_out"] + p["b_out"]


_QKV_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")


def _attention_inputs(resid, cfg: Config, hk: HookRunner, rec, layer):
    """(q, k, v) inputs before ln1, as TransformerLens builds them.

    Normally the residual itself. In split mode (use_split_qkv_input, or a q/k/v_input hook is
    edited) each head gets its own copy [batch, pos, heads, d_model] with its own hook; in
    attn_in mode (use_attn_in, or hook_attn_in is edited) one per-head copy feeds q, k and v.
    """
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    per_head = lambda n: jnp.broadcast_to(resid[:, :, None, :], resid.shape[:2] + (n, cfg.d_model))
    split = cfg.use_split_qkv_input or any(hk.edited(n) for n in _QKV_INPUTS)
    attn_in_mode = cfg.use_attn_in or hk.edited("hook_attn_in")
    if hk.wants("hook_attn_in") and (split or not attn_in_mode):
        hk("hook_attn_in", per_head(H), rec, layer)  # recorded; TransformerLens ignores it here too
    if split:
        return tuple(hk(name, per_head(n), rec, layer) for name, n in zip(_QKV_INPUTS, (H, Hkv, Hkv)))
    if attn_in_mode:
        if Hkv != H:
            raise ValueError("hook_attn_in feeds keys and values per query head, which a grouped-query "
                             "model does not have; edit hook_k_input / hook_v_input instead")
        attn_in = hk("hook_attn_in", per_head(H), rec, layer)
        return attn_in, attn_in, attn_in
    for name, n in zip(_QKV_INPUTS, (H, Hkv, Hkv)):
        if name in hk.captured:
            hk(name, per_head(n), rec, layer)
    return resid, resid, resid


def block(p, resid, layer, cfg: Config, hk: HookRunner, positions, mask, local):
    """One transformer block. Returns (resid_post, captured activations of this layer)."""
    rec: dict = {}
    kind = cfg.normalization_type
    resid = hk("hook_resid_pre", resid, rec, layer)
    ln1 = functools.partial(C.normalize, p=p.get("ln1"), kind=kind, eps=cfg.eps,
                            hook=_sub(hk, rec, "ln1", layer))
    q_in, k_in, v_in = _attention_inputs(resid, cfg, hk, rec, layer)
    if q_in is resid:
        q_in = k_in = v_in = ln1(resid)
    else:
        q_in, k_in, v_in = ln1(q_in), ln1(k_in), ln1(v_in)
    attn_out = attention(p["attn"], q_in, k_in, v_in, cfg, hk, rec, layer, positions, mask, local)
    if cfg.use_normalization_before_and_after:
        attn_out = C.normalize(attn_out, p["ln1_post"], p_kind(p["ln1_post"]), cfg.eps,
                               _sub(hk, rec, "ln1_post", layer))
    attn_out = hk("hook_attn_out", attn_out, rec, layer)
    if cfg.attn_only:
        return hk("hook_resid_post", resid + attn_out, rec, layer), rec
    if cfg.parallel_attn_mlp:
        mlp_in = resid
    else:
        mlp_in = resid_mid = hk("hook_resid_mid", resid + attn_out, rec, layer)
    if hk.wants("hook_mlp_in"):
        mlp_in = hk("hook_mlp_in", mlp_in, rec, layer)
    x = C.normalize(mlp_in, p.get("ln2"), kind, cfg.eps, _sub(hk, rec, "ln2", layer))
    mlp_out = mlp(p["mlp"], x, cfg, hk, rec, layer)
    if cfg.use_normalization_before_and_after:
        mlp_out = C.normalize(mlp_out, p["ln2_post"], p_kind(p["ln2_post"]), cfg.eps,
                              _sub(hk, rec, "ln2_post", layer))
    mlp_out = hk("hook_mlp_out", mlp_out, rec, layer)
    if cfg.parallel_attn_mlp:
        resid_post = resid + attn_out + mlp_out
    else:
        resid_post = resid_mid + mlp_out
    return hk("hook_resid_post", resid_post, rec, layer), rec


def post_ln_block(p, resid, layer, cfg: Config, hk: HookRunner, positions, mask, local):
    """A BERT block (TransformerLens's BertBlock): LayerNorm after each residual add.

    ln1 normalises resid_mid, which feeds the MLP and the second residual add; hook_resid_post
    is before ln2 and the block returns hook_normalized_resid_post.
    """
    rec: dict = {}
    resid = hk("hook_resid_pre", resid, rec, layer)
    q_in, k_in, v_in = _attention_inputs(resid, cfg, hk, rec, layer)
    attn_out = attention(p["attn"], q_in, k_in, v_in, cfg, hk, rec, layer, positions, mask, local)
    attn_out = hk("hook_attn_out", attn_out, rec, layer)
    resid_mid = hk("hook_resid_mid", resid + attn_out, rec, layer)
    if hk.wants("hook_mlp_in"):
        resid_mid = hk("hook_mlp_in", resid_mid, rec, layer)
    x = C.normalize(resid_mid, p["ln1"], "LN", cfg.eps, _sub(hk, rec, "ln1", layer))
    mlp_out = hk("hook_mlp_out", mlp(p["mlp"], x, cfg, hk, rec, layer), rec, layer)
    resid_post = hk("hook_resid_post", x + mlp_out, rec, layer)
    out = C.normalize(resid_post, p["ln2"], "LN", cfg.eps, _sub(hk, rec, "ln2", layer))
    return hk("hook_normalized_resid_post", out, rec, layer), rec


def p_kind(norm_params: dict) -> str:
    """LN or RMS, read off a norm's params (post-norms keep weights after fold_ln)."""
    return "LN" if "b" in norm_params else "RMS"


def run_blocks(blocks: Params, resid, cfg: Config, hk: HookRunner, positions, mask,
               first_layer: int = 0, start_layer=None, scan: bool = True):
    """Run stacked blocks, under `lax.scan` or unrolled.

    Args:
      blocks: params["blocks"], possibly sliced to a layer range starting at `first_layer`.
      start_layer: optional traced layer index; layers before it are skipped (`lax.cond`), so a
        sweep can start from a cached residual without recompiling per layer.
      scan: False unrolls the layers in Python, so hook functions see the layer as a Python int
        and an eager (un-jitted) run needs no compilation (TransformerLens-style hook loops).
    Returns (resid, {template: [n_layers_run, ...]}).
    """
    n = jax.tree_util.tree_leaves(blocks)[0].shape[0]
    local = [t == "local" for t in (cfg.attn_types or ("global",) * cfg.n_layers)]
    block_fn = post_ln_block if cfg.post_ln else block
    if not scan:
        records = []
        for i in range(n):
            p = jax.tree_util.tree_map(lambda a: a[i], blocks)
            l = first_layer + i
            resid, rec = block_fn(p, resid, l, cfg, hk, positions, mask, local[l])
            records.append(rec)
        return resid, {k: jnp.stack([r[k] for r in records]) for k in records[0]} if n else {}
    local = jnp.asarray(local)

    def body(x, inputs):
        p, l = inputs
        run = lambda x: block_fn(p, x, l, cfg, hk, positions, mask, local[l])
        if start_layer is None:
            return run(x)
        skipped = jax.eval_shape(run, x)[1]
        return jax.lax.cond(l >= start_layer, run,
                            lambda x: (x, jax.tree_util.tree_map(
                                lambda s: jnp.zeros(s.shape, s.dtype), skipped)), x)

    return jax.lax.scan(body, resid, (blocks, jnp.arange(first_layer, first_layer + n)))


def final_norm(params: Params, resid, cfg: Config, hk: HookRunner, rec: dict):
    """ln_final (with its hooks), or the residual itself for norm-free models."""
    if cfg.final_norm_type is None:
        return resid
    return C.normalize(resid, params.get("ln_final"), cfg.final_norm_type, cfg.eps,
                       _sub(hk, rec, "ln_final"))


def mlm_head(params: Params, resid, cfg: Config, hk: HookRunner, rec: dict):
    """BERT's masked-LM transform (dense, act_fn, LayerNorm) -> [batch, pos, d_model]."""
    p = params["mlm_head"]
    x = C.ACTIVATION_FNS[cfg.act_fn](resid @ p["W"] + p["b"])
    return C.normalize(x, p["ln"], "LN", cfg.eps, _sub(hk, rec, "mlm_head.ln"))


def unembed(params: Params, resid, cfg: Config, hk: HookRunner, rec: dict):
    """ln_final (BERT: the MLM head) + unembed (+ final logit soft-cap) -> logits [batch, pos, d_vocab_out]."""
    head = mlm_head if cfg.mlm_head else final_norm
    resid = hk("unembed.hook_in", head(params, resid, cfg, hk, rec), rec)
    logits = hk("unembed.hook_out", resid @ params["unembed"]["W_U"] + params["unembed"]["b_U"], rec)
    return C.softcap(logits, cfg.output_logits_soft_cap)


# ----------------------------------------------------------------------------- forward

def _check_encoder_inputs(tokens, token_type_ids, return_type, stop_at_layer, cfg: Config):
    if token_type_ids is not None:
        if not cfg.n_token_types:
            raise ValueError("token_type_ids given, but this model has no token-type embedding "
                             "(n_token_types=0); leave them out")
        if tuple(token_type_ids.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}; it must "
                             f"match the tokens' [batch, pos] = {tuple(tokens.shape[:2])}")
        ids_in_range(token_type_ids, cfg.n_token_types, "token_type_id", "segment ids count "
                     "from 0 up to the model's n_token_types")
    if not cfg.post_ln or stop_at_layer is not None or return_type is None:
        return
    if return_type != "logits":
        raise ValueError(f"return_type={return_type!r}: an encoder has no next-token loss; use "
                         f"'logits' (MLM head), None, or stop_at_layer=n_layers for the embeddings")
    if not cfg.mlm_head:
        raise ValueError("this encoder has no MLM head (e.g. a BertModel checkpoint), so no "
                         "logits: use return_type=None or stop_at_layer=n_layers for the embeddings")


def forward(params: Params, tokens, cfg: Config, hooks: Optional[Hooks] = None, *,
            return_type: Optional[str] = "logits", loss_per_token: bool = False,
            attention_mask=None, start_at_layer: Optional[int] = None,
            stop_at_layer: Optional[int] = None, loss_tokens=None, scan: bool = True,
            token_type_ids=None):
    """Run the model.

    Args:
      params: layer-stacked params (see `param_shapes`).
      tokens: int [batch, pos]; or, with `start_at_layer`, the residual [batch, pos, d_model].
      cfg: the model's Config (static under jit).
      hooks: a `Hooks` of captures and interventions.
      return_type: "logits" [batch, pos, d_vocab_out], "loss" (scalar, or [batch, pos-1] with
        loss_per_token), "both" ((logits, loss)) or None.
      attention_mask: optional [batch, pos] 1/0 padding mask (shifts positions, masks keys).
      start_at_layer / stop_at_layer: run blocks[start_at_layer:stop_at_layer] only (Python
        slicing, as TransformerLens); with stop_at_layer the output is the residual stream
        entering that layer.
      loss_tokens: tokens for the loss when starting from a residual.
      scan: run the blocks under `lax.scan` (default) or unrolled (see `run_blocks`).
      token_type_ids: int [batch, pos] segment ids for BERT-style encoders (default all 0).
    Returns: the output, or `(output, ActivationCache)` when `hooks.capture` selects anything.

    Concrete tokens and masks are checked here; traced ones (under jit/vmap) are checked only
    under `jtlens.checked`, and an out-of-range id otherwise gives NaN logits (see checks.py).
    """
    hk = HookRunner(hooks, cfg)
    rec: dict = {}
    L = cfg.n_layers
    start, stop = layer_range(start_at_layer, stop_at_layer, L)
    if start_at_layer is None:
        check_tokens(tokens, cfg)
        batch, n_pos = tokens.shape
    else:
        batch, n_pos = tokens.shape[:2]
    tokens = jnp.asarray(tokens)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    if mask is not None:
        check_attention_mask(mask, (batch, n_pos))
    if cfg.post_ln or token_type_ids is not None:
        token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
        _check_encoder_inputs(tokens, token_type_ids, return_type, stop_at_layer, cfg)
    # BERT numbers positions 0..pos-1 whatever the padding; decoders shift past left padding.
    positions = C.positions_from_mask(None if cfg.post_ln else mask, n_pos, batch)
    if start_at_layer is not None:
        resid = tokens
    elif cfg.post_ln:
        resid = encoder_embed(params, tokens, cfg, hk, rec, token_type_ids)
    else:
        resid = embed(params, tokens, cfg, hk, rec, positions, mask)
    blocks = params["blocks"]
    if (start, stop) != (0, L):
        blocks = jax.tree_util.tree_map(lambda a: a[start:stop], blocks)
    stacked: dict = {}
    if stop > start:
        resid, stacked = run_blocks(blocks, resid, cfg, hk, positions, mask, first_layer=start,
                                     scan=scan)
    out: Any
    if stop_at_layer is not None:
        out = resid
    elif return_type is None:
        if cfg.mlm_head:  # TransformerLens's HookedEncoder runs its head (and hooks) regardless
            unembed(params, resid, cfg, hk, rec)
        else:
            final_norm(params, resid, cfg, hk, rec)
        out = None
    else:
        logits = unembed(params, resid, cfg, hk, rec)
        if return_type == "logits":
            out = logits
        else:
            loss_on = tokens if start_at_layer is None else loss_tokens
            if loss_on is None:
                raise ValueError("return_type='loss' with start_at_layer needs loss_tokens=")
            loss = C.lm_cross_entropy_loss(logits, loss_on, mask, loss_per_token)
            if return_type == "loss":
                out = loss
            elif return_type == "both":
                out = (logits, loss)
            else:
                raise ValueError(f"return_type={return_type!r}; use 'logits', 'loss', 'both' or None")
    if not hk.capturing:
        return out
    return out, ActivationCache.from_forward(cfg, hk.captured, rec, stacked, first_layer=start)
