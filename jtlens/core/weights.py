"""TransformerLens's weight processing, as pure functions of layer-stacked params.

Each step leaves the model's outputs unchanged (up to f32 rounding; `center_unembed` shifts the
logits by a per-position constant, leaving log-probs unchanged) while making weights easier to
read:

- fold_ln: norm weights (and LayerNorm biases) move into the weights that read the normalised
  stream (in a mixture of experts, the router and every expert's W_gate / W_in); norms become
  weightless (LN -> LNPre, RMS -> RMSPre). For LayerNorm, the reading
  weights are also centred over d_model, since LNPre's input is already mean-free. solu_ln's
  LayerNorm over d_mlp folds into W_out. Not for shortformers: their positions are added to
  ln1's output, after its weights.
- center_writing_weights: everything that writes to the residual stream is mean-free over
  d_model. Only valid when every reader of the residual removes its mean: LayerNorm blocks
  *and* a LayerNorm ln_final. With `final_rms` (RMS after LayerNorm blocks) the unembed sees
  the residual's mean, so the step is skipped, as is centring W_U when folding an RMS ln_final.
- center_unembed: W_U and b_U are mean-free over the vocabulary. Skipped under an output
  logit soft-cap: tanh is not shift-invariant, so the per-position shift would change log-probs.
- fold_value_biases: b_V moves into b_O (attention patterns sum to one). Not under clip_qkv
  (OLMo 1): values are clipped after their bias; nor with attention sinks (GPT-OSS), whose
  pattern rows sum to less than one.
- refactor_factored_attn_matrices: W_Q/W_K and W_V/W_O are re-balanced through SVDs of
  W_Q W_K^T and W_V W_O (biases folded in), so each factor pair has equal singular values.

Params shapes are those of `jtlens.param_shapes(cfg)`; all arithmetic runs in float32. Every
step acts on each layer alone and on the params outside the blocks alone, so `process` also
takes part of the params (`{"blocks": one layer}` or everything but "blocks"): streaming loads
process a layer at a time.
"""

from __future__ import annotations

import numpy as np

from jtlens.core.config import Config

# The steps and TransformerLens's from_pretrained defaults: the one list every loader reads.
DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                      "fold_value_biases": True, "refactor_factored_attn_matrices": False}
NO_PROCESSING = dict.fromkeys(DEFAULT_PROCESSING, False)


def processing_flags(flags: dict) -> dict:
    """Every step's flag: `flags` over `DEFAULT_PROCESSING`, an unknown step a clear error."""
    unknown = sorted(set(flags) - set(DEFAULT_PROCESSING))
    if unknown:
        raise TypeError(f"unknown weight-processing step {unknown[0]!r}; the steps are "
                        f"{list(DEFAULT_PROCESSING)}")
    return {**DEFAULT_PROCESSING, **flags}


def process(params: dict, cfg: Config, **flags: bool) -> dict:
    """Apply the steps `flags` turn on (default `DEFAULT_PROCESSING`: fold_ln,
    center_writing_weights, center_unembed, fold_value_biases on; refactor_factored_attn_matrices
    off) in TransformerLens's order; returns new (numpy) params, sharing with `params` the arrays
    no step changes. Pair with `processed_config` for the Config the result runs under."""
    flags = processing_flags(flags)
    p = _copy(params)
    if flags["fold_ln"] and _foldable(cfg):
        p = fold_layer_norm(p, cfg)
    if flags["center_writing_weights"] and _residual_mean_is_removed(cfg):
        p = center_writing(p, cfg)
    if flags["center_unembed"] and cfg.output_logits_soft_cap <= 0:
        p = center_unembedding(p)
    # b_V moved past a clip would change v; with attention sinks pattern rows do not sum to one.
    if flags["fold_value_biases"] and cfg.clip_qkv is None and not cfg.use_attention_sinks:
        p = fold_value_bias(p, cfg)
    if flags["refactor_factored_attn_matrices"]:
        p = refactor_attn(p, cfg)
    return p


def processed_config(cfg: Config, **flags: bool) -> Config:
    """The Config after `process`: folding makes norms weightless (LN->LNPre, RMS->RMSPre)."""
    if processing_flags(flags)["fold_ln"] and _foldable(cfg):
        return cfg.replace(normalization_type=cfg.normalization_type + "Pre")
    return cfg


def _foldable(cfg: Config) -> bool:
    # A shortformer adds positions to ln1's output, so ln1's weights cannot move into W_Q/W_K;
    # norms on sublayer outputs (OLMo 2) have no reading weights to move into; an encoder-decoder
    # (T5) has norms folding does not know (ln3, two stacks), and TransformerLens folds none.
    # A LayerNorm before a mixture of experts stays: its bias would need a bias on the router
    # and every expert's gate to move into.
    return (cfg.normalization_type in ("LN", "RMS") and cfg.positional_embedding_type != "shortformer"
            and not cfg.norm_sublayer_outputs and not cfg.cross_attention
            and not (cfg.num_experts and cfg.normalization_type == "LN"))


def _is_layer_norm(cfg: Config) -> bool:
    return cfg.normalization_type in ("LN", "LNPre")


def _residual_mean_is_removed(cfg: Config) -> bool:
    """Whether every norm reading the residual stream subtracts its mean (so the mean written
    to it is dead). Post-block norms (use_normalization_before_and_after) read block outputs,
    not the residual, and do not matter here."""
    return (_is_layer_norm(cfg) and cfg.final_norm_type in ("LN", "LNPre")
            and not cfg.norm_sublayer_outputs)  # OLMo 2: attention reads the raw residual


def _copy(tree):
    """New dicts over float32 views of the leaves: every step rebinds the entries it changes and
    never writes into an array, so the caller's arrays need no copy."""
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float32)


def _center(w, axis):
    return w - w.mean(axis, keepdims=True)


def _fold_into(readers: dict, names, norm: dict, center: bool, biases: dict = None):
    """Fold a norm {w[, b]} ([L, D] or [D]) into weights that read its output along their D axis.

    readers[name]: [..., D, out] with D second to last. biases[name] receives b @ W."""
    w, b = norm["w"], norm.get("b")
    for name in names:
        W = readers[name]
        if b is not None:
            bias_name = biases[name]
            readers[bias_name] = readers[bias_name] + _dot_d(b, W)
        W = W * _expand(w, W)
        readers[name] = _center(W, -2) if center else W


def _expand(v, W):
    """[L, D] or [D] -> broadcastable against W [L, (H,) D, out] along W's D axis."""
    if v.ndim == 1:
        return v[:, None]
    extra = W.ndim - v.ndim - 1  # head axes between layer and D
    return v.reshape(v.shape[0], *([1] * extra), v.shape[1], 1)


def _dot_d(v, W):
    """Contract v [L, D] (or [D]) with W over W's D axis -> W's shape without D."""
    if v.ndim == 1:
        return v @ W
    return np.einsum("ld,l...do->l...o", v, W)


def fold_layer_norm(params: dict, cfg: Config) -> dict:
    """Fold ln1 into W_Q/W_K/W_V, ln2 into W_in/W_gate, ln_final into W_U; drop the norm weights."""
    p = params
    center = _is_layer_norm(cfg)
    blocks = p.get("blocks", {})
    if blocks:
        _fold_into(blocks["attn"], ("W_Q", "W_K", "W_V"), blocks.pop("ln1"), center,
                   {"W_Q": "b_Q", "W_K": "b_K", "W_V": "b_V"})
    if "ln2" in blocks and cfg.num_experts:  # the router and every expert read ln2's output
        ln2 = blocks.pop("ln2")
        _fold_into(blocks["mlp"], ("W_router",), ln2, center)
        _fold_into(blocks["mlp"]["experts"], ("W_gate", "W_in"), ln2, center)
        if cfg.shared_expert_d_mlp:  # the shared expert and its gate read it too
            _fold_into(blocks["mlp"], ("W_shared_expert_gate",), ln2, center)
            _fold_into(blocks["mlp"]["shared_expert"], ("W_gate", "W_in"), ln2, center)
    if "ln2" in blocks:
        mlp = blocks["mlp"]
        if cfg.gated_mlp and "b" in blocks["ln2"]:
            raise ValueError("fold_ln: a gated MLP behind a LayerNorm with a bias has no b_gate "
                             "to receive the folded bias; load with fold_ln=False")
        names = ("W_in", "W_gate") if cfg.gated_mlp else ("W_in",)
        _fold_into(mlp, names, blocks.pop("ln2"), center, {"W_in": "b_in"})
    if "mlp" in blocks and "ln" in blocks["mlp"]:
        # solu_ln's LayerNorm over d_mlp folds into W_out, which reads it (centred over d_mlp).
        mlp = blocks["mlp"]
        _fold_into(mlp, ("W_out",), mlp.pop("ln"), True, {"W_out": "b_out"})
    if "ln_final" in p:
        # An RMS ln_final (final_rms) does not centre its input, so W_U must not be centred.
        final_center = cfg.final_norm_type in ("LN", "LNPre")
        _fold_into(p["unembed"], ("W_U",), p.pop("ln_final"), final_center, {"W_U": "b_U"})
    return p


def center_writing(params: dict, cfg: Config) -> dict:
    """Make W_E, W_pos, W_O/b_O and W_out/b_out mean-free over d_model."""
    p = params
    if "embed" in p:
        p["embed"]["W_E"] = _center(p["embed"]["W_E"], -1)
    if "pos_embed" in p and cfg.positional_embedding_type == "standard":  # shortformer: not written
        p["pos_embed"]["W_pos"] = _center(p["pos_embed"]["W_pos"], -1)
    if "blocks" not in p:
        return p
    attn = p["blocks"]["attn"]
    attn["W_O"], attn["b_O"] = _center(attn["W_O"], -1), _center(attn["b_O"], -1)
    if "mlp" in p["blocks"] and cfg.num_experts:
        experts = p["blocks"]["mlp"]["experts"]
        for name in ("W_out", "b_out") if cfg.moe_biases else ("W_out",):
            experts[name] = _center(experts[name], -1)
        if cfg.shared_expert_d_mlp:
            shared = p["blocks"]["mlp"]["shared_expert"]
            shared["W_out"] = _center(shared["W_out"], -1)
    elif "mlp" in p["blocks"]:
        mlp = p["blocks"]["mlp"]
        mlp["W_out"], mlp["b_out"] = _center(mlp["W_out"], -1), _center(mlp["b_out"], -1)
    return p


def center_unembedding(params: dict) -> dict:
    """Make W_U and b_U mean-free over the vocabulary."""
    if "unembed" not in params:
        return params
    u = params["unembed"]
    u["W_U"], u["b_U"] = _center(u["W_U"], -1), _center(u["b_U"], -1)
    return params


def _kv_to_heads(x, cfg: Config):
    """[L, Hkv, ...] -> [L, H, ...] (grouped-query heads share their kv head)."""
    return np.repeat(x, cfg.n_heads // cfg.n_kv_heads, axis=1)


def fold_value_bias(params: dict, cfg: Config) -> dict:
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0."""
    if "blocks" not in params:
        return params
    attn = params["blocks"]["attn"]
    b_V = _kv_to_heads(attn["b_V"], cfg)
    attn["b_O"] = attn["b_O"] + np.einsum("lhe,lhed->ld", b_V, attn["W_O"])
    attn["b_V"] = np.zeros_like(attn["b_V"])
    return params


def _balanced_factors(A, B):
    """A [..., m, r] @ B [..., r, n] = U S Vh; return (U sqrt(S), sqrt(S) Vh) truncated to rank r."""
    U, S, Vh = np.linalg.svd(A @ B, full_matrices=False)
    r = A.shape[-1]
    root = np.sqrt(S[..., :r])
    return U[..., :, :r] * root[..., None, :], root[..., :, None] * Vh[..., :r, :]


def refactor_attn(params: dict, cfg: Config) -> dict:
    """Re-balance W_Q/W_K (biases folded in as an extra row) and W_V/W_O by SVD."""
    if cfg.positional_embedding_type == "rotary":
        raise ValueError("refactor_factored_attn_matrices does not apply to rotary models (the "
                         "rotation sits between W_Q and W_K); load with it off")
    if cfg.n_kv_heads != cfg.n_heads:
        raise ValueError("refactor_factored_attn_matrices needs one K/V head per query head; "
                         "this model uses grouped-query attention")
    if "blocks" not in params:
        return params
    attn = params["blocks"]["attn"]
    Q = np.concatenate([attn["W_Q"], attn["b_Q"][:, :, None]], axis=2)  # [L, H, D+1, Dh]
    K = np.concatenate([attn["W_K"], attn["b_K"][:, :, None]], axis=2)
    Q, Kt = _balanced_factors(Q, np.swapaxes(K, -1, -2))
    K = np.swapaxes(Kt, -1, -2)
    attn["W_Q"], attn["b_Q"] = Q[:, :, :-1], Q[:, :, -1]
    attn["W_K"], attn["b_K"] = K[:, :, :-1], K[:, :, -1]
    # The value bias is constant per head, so it moves into b_O before W_V W_O is factored.
    attn["b_O"] = attn["b_O"] + np.einsum("lhe,lhed->ld", attn["b_V"], attn["W_O"])
    attn["b_V"] = np.zeros_like(attn["b_V"])
    attn["W_V"], attn["W_O"] = _balanced_factors(attn["W_V"], attn["W_O"])
    return params
