"""Llama-style decoders (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2 and 3, Phi-3, OLMo,
Apertus, Mixtral, OLMoE, GPT-OSS, Qwen2-MoE, Qwen3-MoE) -> jtlens.

They share one layout (RMSNorm, rotary, grouped-query attention, gated MLP); the differences are
config knobs and tensor names: q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3),
sliding windows (Mistral, Phi-3, Gemma 2 and 3), Llama-3 rotary scaling, Gemma's sqrt(d_model)
embedding scale and (1 + w) norms, Gemma 2 and 3's extra norms, Gemma 2's soft-capping, Gemma 3's
per-layer-type rotary bases, Phi-3's fused projections. Gemma 3's multimodal checkpoint
(Gemma3ForConditionalGeneration) converts as its text tower; the vision tower is ignored.
OLMo's blocks are Llama's with other norms: OLMo 1's LayerNorms have no weights (and q/k/v may
be clipped), OLMo 2 and 3 normalise each sublayer's output and q/k over all heads together.
Apertus has per-head q/k norms and a plain MLP whose xIELU activation has per-layer parameters.
Mixtral, OLMoE and GPT-OSS replace the MLP with a mixture of experts (a router and per-expert
gated MLPs, stacked on an expert axis); OLMoE normalises q/k over all heads, as OLMo 2; GPT-OSS
has attention sinks, YaRN rotary, alternating sliding/full layers and biased clamped-SwiGLU
experts. Qwen2-MoE and Qwen3-MoE are Qwen2 and Qwen3 with OLMoE's experts; Qwen2-MoE adds a
shared expert whose output a sigmoid gate scales.
"""

from __future__ import annotations

import numpy as np

from jtlens.io.conversions.common import (ConversionError, TensorReader, head_dim, heads,
                                       heads_out, rope, zeros_or)
from jtlens.core.config import Config

GEMMA = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
         "Gemma3ForConditionalGeneration")
GEMMA_POST_NORMS = GEMMA[1:]  # norms before and after each sublayer
GEMMA3 = GEMMA[2:]
OLMO_POST_NORMS = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")
APERTUS = "ApertusForCausalLM"
# Mixtures of experts -> (MoE block under the layer, its expert tensors' gate / up / down names,
# config.json's key for the expert count).
MOE = {"MixtralForCausalLM": ("block_sparse_moe", ("w1", "w3", "w2"), "num_local_experts"),
       "OlmoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj"), "num_experts"),
       "GptOssForCausalLM": ("mlp", None, "num_local_experts"),  # (fused experts, below)
       "Qwen2MoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj"), "num_experts"),
       # (hub configs say num_experts, transformers 5 writes num_local_experts)
       "Qwen3MoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj"),
                               ("num_experts", "num_local_experts"))}
QWEN_MOE = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
GPT_OSS = "GptOssForCausalLM"
# Where the decoder's tensors sit -> its unembedding: text-only models, then Gemma 3's
# multimodal checkpoint as saved (language_model.*) and as transformers 5 names it in memory.
PREFIXES = {"model.": "lm_head.weight", "language_model.model.": "language_model.lm_head.weight",
            "model.language_model.": "lm_head.weight"}
VISION = ("vision_tower.*", "multi_modal_projector.*", "model.vision_tower.*",
          "model.multi_modal_projector.*")


def _text_config(hf: dict) -> dict:
    """The decoder's settings: a multimodal config's text_config, under its architecture."""
    if "text_config" not in hf:
        return hf
    return dict(hf["text_config"], architectures=hf["architectures"],
                _name_or_path=hf.get("_name_or_path"))


def _local_attention(hf: dict, arch: str, n_layers: int) -> dict:
    window = hf.get("sliding_window")
    if arch.startswith("Qwen") and not hf.get("use_sliding_window", False):
        window = None  # Qwen configs carry a window size they do not use
    # A window as long as the context still marks Gemma 3's local layers: they rotate differently.
    if not window or window >= hf["max_position_embeddings"] and arch not in GEMMA3:
        return {}
    if arch.startswith("Qwen") and hf.get("max_window_layers", n_layers) < n_layers:
        raise ConversionError("Qwen sliding windows on only some layers are not supported")
    kinds = hf.get("layer_types") or (["sliding_attention", "full_attention"] * n_layers
                                      if arch == "Gemma2ForCausalLM" else
                                      ["sliding_attention"] * n_layers)
    types = tuple("local" if k == "sliding_attention" else "global" for k in kinds[:n_layers])
    return dict(use_local_attn=True, window_size=window, attn_types=types)


def _n_experts(hf: dict, arch: str) -> int:
    """The expert count, under the config key (or first of the keys) MOE names for `arch`."""
    keys = MOE[arch][2]
    return next((hf[k] for k in keys if k in hf), 0) if isinstance(keys, tuple) else hf[keys]


def _qwen_moe(hf: dict, n_layers: int) -> dict:
    """Qwen2-MoE / Qwen3-MoE: every layer a mixture of experts (dense layers among them, by
    decoder_sparse_step or mlp_only_layers, are refused: jtlens's layers share one layout);
    Qwen2-MoE adds a shared expert."""
    n_experts = _n_experts(hf, hf["architectures"][0])
    sparse = [l not in (hf.get("mlp_only_layers") or []) and n_experts
              and (l + 1) % hf.get("decoder_sparse_step", 1) == 0 for l in range(n_layers)]
    if not all(sparse):
        raise ConversionError(f"layers {[l for l, s in enumerate(sparse) if not s]} have a dense MLP "
                              f"(decoder_sparse_step={hf.get('decoder_sparse_step')}, mlp_only_layers="
                              f"{hf.get('mlp_only_layers')}, num_experts={n_experts}); only "
                              f"checkpoints whose every layer is a mixture of experts convert")
    shared = hf.get("shared_expert_intermediate_size")
    return dict(shared_expert_d_mlp=shared) if hf["architectures"][0] == "Qwen2MoeForCausalLM" else {}


def config_from_hf(hf: dict) -> Config:
    """A Llama / Mistral / Qwen2 / Qwen3 / Gemma 1-3 / Phi-3 / OLMo 1-3 / Apertus / Mixtral /
    OLMoE / GPT-OSS config dict -> Config."""
    arch = hf["architectures"][0]
    hf = _text_config(hf)
    n_heads, n_layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    d_head = hf.get("head_dim") or head_dim(hf["hidden_size"], n_heads)
    n_kv = hf.get("num_key_value_heads") or n_heads
    partial = (hf.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                     hf.get("partial_rotary_factor", 1.0))
    extra = {}
    if arch in GEMMA_POST_NORMS:
        extra = dict(attn_scale=float(hf["query_pre_attn_scalar"]) ** 0.5,
                     attn_scores_soft_cap=float(hf.get("attn_logit_softcapping") or -1.0),
                     output_logits_soft_cap=float(hf.get("final_logit_softcapping") or -1.0),
                     use_normalization_before_and_after=True)
    if arch == "OlmoForCausalLM":  # weightless LayerNorms (eps fixed at 1e-5 in transformers)
        extra = dict(normalization_type="LNPre", final_rms=False, eps=1e-5,
                     clip_qkv=hf.get("clip_qkv"))
    if arch in OLMO_POST_NORMS:
        extra = dict(qk_norm_over_heads=True, norm_sublayer_outputs=True)
    if arch == APERTUS:  # xIELU in a plain (ungated) MLP
        extra = dict(gated_mlp=False)
    if arch == "OlmoeForCausalLM":
        extra = dict(qk_norm_over_heads=True, clip_qkv=hf.get("clip_qkv"))
    if arch == GPT_OSS:  # softmax over the chosen router logits, biased clamped-SwiGLU experts
        extra = dict(use_attention_sinks=True, moe_biases=True, moe_softmax_after_topk=True,
                     norm_topk_prob=False, swiglu_limit=float(hf["swiglu_limit"]),
                     swiglu_alpha=float(hf["swiglu_alpha"]))
    if arch in QWEN_MOE:
        extra = _qwen_moe(hf, n_layers)
    if arch in MOE:  # Mixtral renormalises the top-k routing weights always (its config has no flag)
        extra = dict(dict(norm_topk_prob=hf.get("norm_topk_prob", True)), **extra,
                     num_experts=_n_experts(hf, arch), experts_per_token=hf["num_experts_per_tok"])
    return Config(
        n_layers=n_layers, d_model=hf["hidden_size"], n_heads=n_heads, d_head=d_head,
        d_mlp=hf["moe_intermediate_size"] if arch in QWEN_MOE else hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_activation") or hf.get("hidden_act", "silu"),
        **dict(dict(normalization_type="RMS", final_rms=True, eps=hf.get("rms_norm_eps", 1e-6),
                    gated_mlp=True), **extra),
        positional_embedding_type="rotary", rotary_dim=round(partial * d_head),
        rotary_adjacent_pairs=False, n_key_value_heads=n_kv if n_kv != n_heads else None,
        use_qk_norm=arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", APERTUS) or arch in GEMMA3,
        default_prepend_bos=not arch.startswith("Qwen"),
        original_architecture=arch, model_name=hf.get("_name_or_path") or arch,
        **_local_attention(hf, arch, n_layers), **rope(hf))


def params_from_hf(r: TensorReader, cfg: Config) -> dict:
    """Llama-layout checkpoint tensors -> jtlens params."""
    H, Hkv, Dh, D, M = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    gemma = cfg.original_architecture in GEMMA
    r.ignore("*.rotary_emb.inv_freq", *VISION)
    pre = next((p for p in PREFIXES if f"{p}embed_tokens.weight" in r), "model.")

    def norm(name):
        w = r.take(f"{name}.weight")
        return {"w": w + 1.0 if gemma else w}  # Gemma's RMSNorm scales by (1 + w)

    def bias(name, n):
        return zeros_or(r.take_optional(f"{name}.bias"), (n * Dh,)).reshape(n, Dh)

    def projections(a):
        if f"{a}.qkv_proj.weight" in r:  # Phi-3 fuses q, k, v
            q, k, v = np.split(r.take(f"{a}.qkv_proj.weight"), [H * Dh, (H + Hkv) * Dh])
            zero = lambda n: np.zeros((n, Dh), np.float32)  # noqa: E731
            return q, k, v, zero(H), zero(Hkv), zero(Hkv)
        return (r.take(f"{a}.q_proj.weight"), r.take(f"{a}.k_proj.weight"),
                r.take(f"{a}.v_proj.weight"), bias(f"{a}.q_proj", H), bias(f"{a}.k_proj", Hkv),
                bias(f"{a}.v_proj", Hkv))

    def gate_up(m):
        if not cfg.gated_mlp:  # Apertus
            return None, r.take(f"{m}.up_proj.weight")
        if f"{m}.gate_up_proj.weight" in r:  # Phi-3 fuses gate and up
            return np.split(r.take(f"{m}.gate_up_proj.weight"), 2)
        if f"{m}.gate_proj.bias" in r:
            raise ConversionError(f"{m}.gate_proj.bias: a bias on the gate projection has no "
                                  f"place in TransformerLens's gated MLP")
        return r.take(f"{m}.gate_proj.weight"), r.take(f"{m}.up_proj.weight")

    def dense_mlp(m):
        gate, up = gate_up(m)
        mlp = {"W_in": up.T, "W_out": r.take(f"{m}.down_proj.weight").T,
               "b_in": zeros_or(r.take_optional(f"{m}.up_proj.bias"), (M,)),
               "b_out": zeros_or(r.take_optional(f"{m}.down_proj.bias"), (D,))}
        if gate is not None:
            mlp["W_gate"] = gate.T
        if cfg.act_fn == "xielu":  # its parameters, stored [1] or [] per layer
            mlp["act_fn"] = {k: r.take(f"{m}.act_fn.{k}").reshape(())
                             for k in ("alpha_p", "alpha_n", "beta", "eps")}
        return mlp

    def fused_experts(m):
        """GPT-OSS: router and experts with biases; gate and up interleaved in gate_up_proj
        [E, D, 2M] (gate the even columns), down_proj [E, M, D]."""
        e = f"{m}.experts"
        gate_up, gate_up_b = r.take(f"{e}.gate_up_proj"), r.take(f"{e}.gate_up_proj_bias")
        return {"W_router": r.take(f"{m}.router.weight").T, "b_router": r.take(f"{m}.router.bias"),
                "experts": {"W_gate": gate_up[..., ::2], "W_in": gate_up[..., 1::2],
                            "W_out": r.take(f"{e}.down_proj"), "b_gate": gate_up_b[..., ::2],
                            "b_in": gate_up_b[..., 1::2], "b_out": r.take(f"{e}.down_proj_bias")}}

    def experts(b):
        """The router [D, E] and the experts' stacked gate / up [E, D, M] and down [E, M, D]."""
        block, names, _ = MOE[cfg.original_architecture]
        if names is None:
            return fused_experts(f"{b}.{block}")
        stacked = [np.stack([r.take(f"{b}.{block}.experts.{e}.{n}.weight").T
                             for e in range(cfg.num_experts)]) for n in names]
        out = {"W_router": r.take(f"{b}.{block}.gate.weight").T,
               "experts": dict(zip(("W_gate", "W_in", "W_out"), stacked))}
        if cfg.shared_expert_d_mlp:  # Qwen2-MoE
            shared = f"{b}.{block}.shared_expert"
            out["shared_expert"] = {k: r.take(f"{shared}.{n}.weight").T
                                    for k, n in zip(("W_gate", "W_in", "W_out"), names)}
            out["W_shared_expert_gate"] = r.take(f"{shared}_gate.weight").T
        return out

    def layer(l):
        b = f"{pre}layers.{l}"
        a, m = f"{b}.self_attn", f"{b}.mlp"
        q, k, v, b_q, b_k, b_v = projections(a)
        attn = {"W_Q": heads(q, H, Dh), "W_K": heads(k, Hkv, Dh), "W_V": heads(v, Hkv, Dh),
                "b_Q": b_q, "b_K": b_k, "b_V": b_v, "W_O": heads_out(r.take(f"{a}.o_proj.weight"), H, Dh),
                "b_O": zeros_or(r.take_optional(f"{a}.o_proj.bias"), (D,))}
        if cfg.use_qk_norm or cfg.qk_norm_over_heads:
            attn["q_norm"], attn["k_norm"] = norm(f"{a}.q_norm"), norm(f"{a}.k_norm")
        if cfg.use_attention_sinks:
            attn["sinks"] = r.take(f"{a}.sinks")
        mlp = experts(b) if cfg.num_experts else dense_mlp(m)
        if cfg.norm_sublayer_outputs:  # OLMo 2, 3: ln1 / ln2 normalise the sublayer outputs
            return {"attn": attn, "mlp": mlp, "ln1": norm(f"{b}.post_attention_layernorm"),
                    "ln2": norm(f"{b}.post_feedforward_layernorm")}
        out = {"attn": attn, "mlp": mlp}
        if cfg.normalization_type == "LNPre":  # OLMo 1: its LayerNorms have no weights
            return out
        if cfg.original_architecture == APERTUS:
            return dict(out, ln1=norm(f"{b}.attention_layernorm"),
                        ln2=norm(f"{b}.feedforward_layernorm"))
        out["ln1"] = norm(f"{b}.input_layernorm")
        if cfg.use_normalization_before_and_after:  # Gemma 2, 3: norms before and after each sublayer
            out.update(ln1_post=norm(f"{b}.post_attention_layernorm"),
                       ln2=norm(f"{b}.pre_feedforward_layernorm"),
                       ln2_post=norm(f"{b}.post_feedforward_layernorm"))
        else:
            out["ln2"] = norm(f"{b}.post_attention_layernorm")
        return out

    embed = r.take(f"{pre}embed_tokens.weight")
    # Gemma multiplies embeddings by sqrt(d_model); the tied unembedding is not scaled.
    W_E = embed * np.float32(D ** 0.5) if gemma else embed
    params = {"embed": {"W_E": W_E}, "blocks": r.stack_layers(cfg.n_layers, layer),
              "unembed": {"W_U": r.unembedding(PREFIXES[pre], embed).T,
                          "b_U": np.zeros(cfg.d_vocab, np.float32)}}
    if cfg.normalization_type != "LNPre":
        params["ln_final"] = norm(f"{pre}norm")
    return params
