"""TransformerLens 3.9 as the oracle: build HookedTransformers offline and compare caches.

Shared by the parity tests: `CONFIGS` (one TransformerLens config per architecture family),
`tl_model`/`to_jtlens` (the same random weights on both sides), `pair` (a TransformerLens model
and a jtlens facade sharing weights and a BPE tokenizer). Importing it skips a test module when
torch or transformer_lens is missing.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")
tlp = pytest.importorskip("transformer_lens.patching")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

import jtlens  # noqa: E402
from jtlens.conversions.transformer_lens import config_from_tl, params_from_state_dict  # noqa: E402

BASE = dict(n_layers=2, d_model=64, n_ctx=64, d_head=16, n_heads=4, d_vocab=300,
            use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True)

CONFIGS = {
    "gpt2": dict(BASE, act_fn="gelu_new", normalization_type="LN"),
    "neox": dict(BASE, act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                 rotary_dim=4, parallel_attn_mlp=True),
    "gptj": dict(BASE, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="rotary",
                 rotary_dim=8, rotary_adjacent_pairs=True, parallel_attn_mlp=True),
    "llama": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                  n_key_value_heads=2, gated_mlp=True, final_rms=True, eps=1e-6,
                  use_split_qkv_input=False),
    "llama3_scaled": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                          gated_mlp=True, final_rms=True, rotary_base=500000.0, use_NTK_by_parts_rope=True,
                          NTK_by_parts_factor=8.0, NTK_original_ctx_len=16),
    "gemma2_like": dict(BASE, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                        positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
                        n_key_value_heads=2, use_split_qkv_input=False,
                        use_normalization_before_and_after=True, attn_scores_soft_cap=50.0,
                        output_logits_soft_cap=30.0, use_local_attn=True, window_size=4,
                        attn_types=["local", "global"], attn_scale=8.0),
    "gemma3_like": dict(BASE, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                        positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
                        n_key_value_heads=2, use_split_qkv_input=False, use_qk_norm=True,
                        use_normalization_before_and_after=True, use_local_attn=True, window_size=4,
                        attn_types=["local", "global"], attn_scale=8.0, rotary_base=1000.0,
                        rotary_base_local=100.0, rotary_scaling_factor=4.0),
    "phi_like": dict(BASE, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="rotary",
                     rotary_dim=8, parallel_attn_mlp=True),
    "bloom_like": dict(BASE, act_fn="gelu_fast", normalization_type="LN", positional_embedding_type="alibi",
                       post_embedding_ln=True),
    "apertus_like": dict(BASE, act_fn="xielu", normalization_type="RMS", positional_embedding_type="rotary",
                         final_rms=True, use_qk_norm=True, n_key_value_heads=2,
                         use_split_qkv_input=False),
    "olmo2_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                       gated_mlp=True, use_split_qkv_input=False,
                       original_architecture="Olmo2ForCausalLM"),
    "olmo_like": dict(BASE, act_fn="silu", normalization_type="LNPre", positional_embedding_type="rotary",
                      gated_mlp=True, clip_qkv=0.1, original_architecture="OlmoForCausalLM"),
    "qwen3_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                       gated_mlp=True, final_rms=True, use_qk_norm=True, n_key_value_heads=2,
                       use_split_qkv_input=False),
    # Qwen 1: log-n attention and dynamic NTK rotary past a training length the tests stay within
    "qwen_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                      gated_mlp=True, final_rms=True, use_logn_attn=True, use_dynamic_ntk_rope=True,
                      train_seq_length=16, use_split_qkv_input=False),
    "mixtral_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                         n_key_value_heads=2, gated_mlp=True, final_rms=True, d_mlp=32,
                         num_experts=4, experts_per_token=2, norm_topk_prob=True,
                         use_split_qkv_input=False),
    "olmoe_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                       n_key_value_heads=2, gated_mlp=True, d_mlp=32, num_experts=4,
                       experts_per_token=2, clip_qkv=1.5, use_split_qkv_input=False,
                       original_architecture="OlmoeForCausalLM"),
    "gpt_oss_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                         n_key_value_heads=2, gated_mlp=True, final_rms=True, d_mlp=32,
                         num_experts=4, experts_per_token=2, use_attention_sinks=True,
                         use_local_attn=True, window_size=4, attn_types=["local", "global"],
                         use_yarn_rope=True, yarn_factor=32.0, yarn_attention_factor=1.3466,
                         yarn_original_max_position_embeddings=4096, yarn_truncate=False,
                         rotary_base=150000.0, use_split_qkv_input=False,
                         original_architecture="GptOssForCausalLM"),
    "gptneo_like": dict(BASE, act_fn="gelu_new", use_attn_scale=False, use_local_attn=True,
                        window_size=3, attn_types=["global", "local"]),
    "alibi_relu_attn_only": dict(BASE, act_fn="relu", positional_embedding_type="alibi",
                                 attn_only=True, d_mlp=None),
    "stanford_scaled": dict(BASE, act_fn="gelu_new", scale_attn_by_inverse_layer_idx=True,
                            normalization_type="LNPre"),
}


def tl_model(cfg_dict: dict, seed: int = 0):
    """A randomly initialised TransformerLens HookedTransformer (no tokenizer, no hub)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(**cfg_dict, device="cpu", seed=seed)
    model = HookedTransformer(cfg, move_to_device=False).eval()
    # TL zero-initialises biases and unit-initialises norms; randomise them so they are tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".w",
                              "alpha_p", "alpha_n", "sinks")):  # (alpha: xIELU's parameters)
                p.add_(0.1 * torch.randn_like(p))
    return model


def to_jtlens(model):
    cfg = config_from_tl(model.cfg)
    return cfg, params_from_state_dict(model.state_dict(), cfg)


def tl_from_folder(folder, hf_model=None, tokenizer=None):
    """TransformerLens 3.9's HookedTransformer for a local Hugging Face folder, offline, with its
    from_pretrained processing (fold_ln, centring, value biases). TL guesses architectures from
    names, so the folder's path must not contain a family name such as "llama"."""
    import transformer_lens.loading_from_pretrained as lp
    from transformers import AutoModelForCausalLM
    from transformer_lens import HookedTransformer

    hf = hf_model if hf_model is not None else AutoModelForCausalLM.from_pretrained(folder).eval()
    cfg = lp.get_pretrained_model_config(str(folder), fold_ln=True, device="cpu", dtype=torch.float32)
    sd = lp.get_pretrained_state_dict(str(folder), cfg, hf_model=hf, dtype=torch.float32)
    cfg.tokenizer_name = None  # set_tokenizer below, or none (random checkpoints have none)
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(sd, **tl_processing(cfg))
    if tokenizer is not None:
        tl.set_tokenizer(tokenizer)
    return tl.eval()


def tl_processing(cfg, center_unembed=True) -> dict:
    """The processing TransformerLens's from_pretrained applies by default: no fold_ln or
    writing-weight centring for post-norm blocks (OLMo 2, 3), which its own
    load_and_process_state_dict would apply regardless. Value biases stay under attention sinks
    (GPT-OSS), as jtlens leaves them: TransformerLens 3.9 folds them although pattern rows sum to
    less than one there, which changes its outputs (by 0.02 on the tiny GPT-OSS's logits)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    pre_norm = cfg.original_architecture not in POST_NORM_ARCHITECTURES
    return dict(fold_ln=pre_norm, center_writing_weights=pre_norm, center_unembed=center_unembed,
                fold_value_biases=not cfg.use_attention_sinks)


def hf_from_gguf(path):
    """transformers' own GGUF loading of a file (dequantised to float32) and its tokenizer."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def save_plain_hf(model, folder):
    """Save a GGUF-loaded transformers model as an ordinary float32 folder (its own
    save_pretrained refuses a model "quantized with gguf"): the same weights in a fresh model."""
    config = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    plain = type(model)(config).eval()
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
    return plain


def smollm2_hf(base):
    """SmolLM2-135M as transformers loads its GGUF (dequantised to float32): (plain model,
    the GGUF's tokenizer, a Hugging Face folder of both). Dequantising takes ~40 s, so it happens
    once per `base` folder (under a file lock: xdist workers share it) and later calls read the
    saved float32 folder back, the same weights."""
    import os
    from pathlib import Path

    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jtlens.io.gguf_models import packaged

    gguf = Path(packaged("smollm2-135m"))
    Path(base).mkdir(parents=True, exist_ok=True)
    folder = Path(base) / "smol-hf"  # no "llama" in the path: TransformerLens guesses by name
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            model, tokenizer = hf_from_gguf(gguf)
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            save_plain_hf(model, tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(folder)  # whole or absent, should a run stop halfway
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), folder


def tl_cache(model, tokens, **kw):
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.as_tensor(np.asarray(tokens)), **kw)
    return logits.numpy(), {k: v.numpy() for k, v in cache.items()}


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    finite = np.isfinite(a) & np.isfinite(b)
    assert (np.isfinite(a) == np.isfinite(b)).all(), "masked (-inf) entries differ"
    return float(np.abs(a - b)[finite].max()) if finite.any() else 0.0


def rel_diff(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| over the finite entries (masked scores are -inf)."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert a.shape == b.shape and (np.isfinite(a) == np.isfinite(b)).all()
    finite = np.isfinite(b)
    diff, scale = np.abs(a[finite] - b[finite]).max(), np.abs(b[finite]).max()
    return float(diff / scale) if scale else float(diff)


# TransformerLens's per-expert hooks (blocks.L.mlp.experts.E.hook_gate / hook_pre / hook_post) hold
# only the tokens routed to that expert: a data-dependent shape, which a jitted forward cannot
# return, so jtlens has no such hooks (README, supported architectures).
ROUTED_TOKENS_ONLY = re.compile(r"\.mlp\.experts\.\d+\.hook_")


def assert_caches_match(ours, theirs: dict, atol: float = 1e-4):
    """Every TransformerLens activation (but the routed-tokens-only expert hooks) exists in ours
    under the same name and matches."""
    theirs = {k: v for k, v in theirs.items() if not ROUTED_TOKENS_ONLY.search(k)}
    assert set(ours.keys()) == set(theirs), (
        f"hook names differ: only TL {sorted(set(theirs) - set(ours.keys()))[:8]}, "
        f"only jtlens {sorted(set(ours.keys()) - set(theirs))[:8]}")
    worst = {k: max_diff(ours[k], theirs[k]) for k in theirs}
    bad = {k: v for k, v in worst.items() if v > atol}
    assert not bad, f"activations differ from TransformerLens: {bad}"
    return worst


def tokens_for(cfg, batch=2, pos=12, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, pos)))


TEXTS = ["The cat sat on the mat.", "The Eiffel Tower is in Paris", "Hello world, hello there"]


@functools.lru_cache(maxsize=None)
def tokenizer():
    """A byte-level BPE trained on a few sentences, saved and reloaded as TransformerLens needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tempfile.mkdtemp()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@functools.lru_cache(maxsize=None)
def pair(padding_side):
    tok = tokenizer()
    tl = tl_model(dict(CONFIGS["gpt2"], d_vocab=len(tok)))
    tl.set_tokenizer(tok, default_padding_side=padding_side)
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params, tok, default_padding_side=padding_side)


# ----------------------------------------------------------------------------- Hugging Face checkpoints
# Tiny random checkpoints of every supported family (the conversion and streaming tests).
SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
GEMMA3_TEXT = dict(SMALL, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=12,
                   sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                   rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=100.0),
                                    "full_attention": dict(rope_type="linear", factor=4.0,
                                                           rope_theta=1000.0)})
FAMILIES = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4,
                                            n_positions=64),
    "gptj": lambda: transformers.GPTJConfig(vocab_size=97, n_embd=32, n_layer=2, n_head=4,
                                            n_positions=64, rotary_dim=4),
    "gpt_neo": lambda: transformers.GPTNeoConfig(vocab_size=97, hidden_size=32, num_layers=2,
                                                 num_heads=4, max_position_embeddings=64,
                                                 attention_types=[[["global", "local"], 1]],
                                                 window_size=4),
    "opt": lambda: transformers.OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, ffn_dim=48,
                                          max_position_embeddings=64, pad_token_id=1,
                                          bos_token_id=0, eos_token_id=0),
    "neox": lambda: transformers.GPTNeoXConfig(**SMALL, rotary_pct=0.5, use_parallel_residual=True),
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
    "llama3": lambda: transformers.LlamaConfig(**SMALL, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8)),
    "mistral": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=4),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16),
    "gemma": lambda: transformers.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=8,
                                                query_pre_attn_scalar=12, sliding_window=4),
    # 5:1 local/global in real checkpoints; here one of each, each with its own rotary base, and
    # linear rotary scaling on the global layer.
    "gemma3": lambda: transformers.Gemma3TextConfig(**GEMMA3_TEXT),
    "gemma3_multimodal": lambda: transformers.Gemma3Config(
        text_config=GEMMA3_TEXT, mm_tokens_per_image=4, vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8)),
    "olmo": lambda: transformers.OlmoConfig(**SMALL, clip_qkv=0.1, pad_token_id=0,
                                            eos_token_id=0),
    "olmo2": lambda: transformers.Olmo2Config(**SMALL, pad_token_id=0, eos_token_id=0),
    "olmo3": lambda: transformers.Olmo3Config(
        **SMALL, num_key_value_heads=2, sliding_window=4, pad_token_id=0, eos_token_id=0,
        layer_types=["sliding_attention", "full_attention"], rope_parameters={
            "sliding_attention": dict(rope_type="default", rope_theta=100.0),
            "full_attention": dict(rope_type="default", rope_theta=1000.0)}),
    "apertus": lambda: transformers.ApertusConfig(**SMALL, num_key_value_heads=2, pad_token_id=0,
                                                  rope_parameters=dict(
        rope_type="llama3", rope_theta=5e4, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8)),
    # Mixtures of experts: 4 experts, 2 per token.
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4,
                                                  num_experts_per_tok=2),
    "olmoe": lambda: transformers.OlmoeConfig(**SMALL, num_key_value_heads=2, num_experts=4,
                                              num_experts_per_tok=2, pad_token_id=0, eos_token_id=0),
    # Qwen2-MoE: biased q/k/v, a shared expert (its own width) beside the routed ones
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **SMALL, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, shared_expert_intermediate_size=40),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **SMALL, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, norm_topk_prob=True),
    # Attention sinks, YaRN rotary (its released settings), one sliding and one full layer, and
    # biased clamped-SwiGLU experts.
    "gpt_oss": lambda: transformers.GptOssConfig(
        **SMALL, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    "bloom": lambda: transformers.BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4,
                                              seq_length=64),
    "phi": lambda: transformers.PhiConfig(**SMALL, partial_rotary_factor=0.5, pad_token_id=0),
    "phi3": lambda: transformers.Phi3Config(**SMALL, num_key_value_heads=2, sliding_window=5,
                                              pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # Qwen 1 (remote code, no transformers class): a Qwen 2 without grouped-query attention
    # computes the same, saved under Qwen 1's names (REMOTE_CODE).
    "qwen": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=4),
}
MODELS = {"gpt2": "GPT2LMHeadModel", "gptj": "GPTJForCausalLM", "gpt_neo": "GPTNeoForCausalLM",
          "opt": "OPTForCausalLM", "neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
          "llama3": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
          "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
          "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
          "gemma3_multimodal": "Gemma3ForConditionalGeneration", "olmo": "OlmoForCausalLM",
          "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM", "phi": "PhiForCausalLM",
          "bloom": "BloomForCausalLM", "apertus": "ApertusForCausalLM",
          "phi3": "Phi3ForCausalLM", "mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM",
          "gpt_oss": "GptOssForCausalLM", "qwen": "QWenLMHeadModel",
          "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


# The families TransformerLens 3.9 loads from a Hugging Face folder offline.
TL_CAN_LOAD = ("gpt2", "gptj", "gpt_neo", "opt", "neox", "llama", "mistral", "qwen2", "qwen3", "phi3",
               "olmo3", "bloom", "apertus", "mixtral", "olmoe", "gpt_oss")
# Those it supports but picks by hub name, or loads with remote code (Qwen 1): tests build its
# config by hand or with its remote code's config stubbed (tests/io/test_conversions.py).
TL_BY_HAND = ("gemma", "gemma2", "gemma3", "gemma3_multimodal", "olmo", "olmo2", "phi", "qwen")


# Qwen 1's tensor names for a Qwen 2 without grouped-query attention (the same function): per
# layer, then outside the layers; q, k and v fuse into c_attn (rows: q, then k, then v).
QWEN1_LAYER = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2",
               "self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.w1",  # w2 is the gate
               "mlp.gate_proj": "mlp.w2", "mlp.down_proj": "mlp.c_proj"}
QWEN1_TOP = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f",
             "lm_head": "lm_head"}


def qwen1_tensors(sd: dict, n_layers: int) -> dict:
    """A Qwen 2 state dict (numpy) under Qwen 1's names."""
    out = {f"{QWEN1_TOP[k]}.weight": sd[f"{k}.weight"] for k in QWEN1_TOP if f"{k}.weight" in sd}
    out.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])  # never tied in Qwen 1
    for l in range(n_layers):
        a, b = f"model.layers.{l}", f"transformer.h.{l}"
        out.update({f"{b}.{v}.weight": sd[f"{a}.{k}.weight"] for k, v in QWEN1_LAYER.items()})
        for kind in ("weight", "bias"):
            out[f"{b}.attn.c_attn.{kind}"] = np.concatenate(
                [sd[f"{a}.self_attn.{x}_proj.{kind}"] for x in "qkv"])
    return out


def qwen2_tensors(sd: dict, n_layers: int) -> dict:
    """Qwen 1 tensors (numpy) back under Qwen 2's names (qwen1_tensors' inverse)."""
    out = {f"{k}.weight": sd[f"{v}.weight"] for k, v in QWEN1_TOP.items()}
    for l in range(n_layers):
        a, b = f"model.layers.{l}", f"transformer.h.{l}"
        out.update({f"{a}.{k}.weight": sd[f"{b}.{v}.weight"] for k, v in QWEN1_LAYER.items()})
        for kind in ("weight", "bias"):
            q, k, v = np.split(sd[f"{b}.attn.c_attn.{kind}"], 3)
            out.update({f"{a}.self_attn.q_proj.{kind}": q, f"{a}.self_attn.k_proj.{kind}": k,
                        f"{a}.self_attn.v_proj.{kind}": v})
    return out


def save_as_qwen1(model, folder):
    """A Qwen2ForCausalLM without grouped-query attention written as a Qwen 1 checkpoint
    (QWenLMHeadModel's tensor names and config.json, as its remote code reads them): the same
    function, so the Qwen 2 model is the logits oracle."""
    from safetensors.numpy import save_file

    c = model.config
    assert c.num_key_value_heads == c.num_attention_heads
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    save_file({k: np.ascontiguousarray(v) for k, v in qwen1_tensors(sd, c.num_hidden_layers).items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(dict(
        architectures=["QWenLMHeadModel"], model_type="qwen", vocab_size=c.vocab_size,
        hidden_size=c.hidden_size, num_attention_heads=c.num_attention_heads,
        num_hidden_layers=c.num_hidden_layers, intermediate_size=2 * c.intermediate_size,
        kv_channels=c.hidden_size // c.num_attention_heads, layer_norm_epsilon=c.rms_norm_eps,
        rotary_emb_base=c.rope_parameters["rope_theta"], rotary_pct=1.0,
        seq_length=c.max_position_embeddings, max_position_embeddings=c.max_position_embeddings,
        no_bias=True, use_logn_attn=True, use_dynamic_ntk=True, scale_attn_weights=True,
        tie_word_embeddings=False, initializer_range=0.02,
        auto_map={"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"})))


# Families whose checkpoints need remote code: name -> (the transformers class computing the
# same function, the writer of its checkpoint in the family's own layout).
REMOTE_CODE = {"qwen": ("Qwen2ForCausalLM", save_as_qwen1)}


def hf_model(name, config=None):
    """A randomly initialised transformers model of family `name` (its FAMILIES config unless
    `config`): the family's own class or, for REMOTE_CODE families, its stand-in."""
    cls = REMOTE_CODE[name][0] if name in REMOTE_CODE else MODELS[name]
    return getattr(transformers, cls)(config or FAMILIES[name]()).eval()


def save_hf(model, name, folder, **save_kw):
    """Save a model of family `name` as that family's checkpoint folder."""
    if name in REMOTE_CODE:
        return REMOTE_CODE[name][1](model, folder)
    model.save_pretrained(folder, **save_kw)
    if name == "gpt2":  # TransformerLens 3.9 reads n_ctx, which transformers 5 no longer writes
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(cfg, n_ctx=cfg["n_positions"])))


def build_hf(name, folder, **save_kw):
    torch.manual_seed(0)
    model = hf_model(name)
    with torch.no_grad():  # HF initialises norms to one and biases to zero: randomise them
        for pname, p in model.named_parameters():
            if ("norm" in pname or "ln" in pname or pname.endswith(("bias", "sinks"))
                    or "act_fn" in pname):  # (act_fn: Apertus's per-layer xIELU)
                p.add_(0.1 * torch.randn_like(p))
    save_hf(model, name, folder, **save_kw)
    return model


# T5 (HookedEncoderDecoder): tiny random checkpoints in both variants.
# Few buckets and a short max_distance, so 7-token inputs reach the logarithmic buckets too.
T5_SMALL = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
T5_VARIANTS = {"v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
               "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}


def tl_t5(hf, scaled: bool):
    """TransformerLens's HookedEncoderDecoder on the Hugging Face weights (its converter; the
    gated MLP's two input matrices added by hand)."""
    from transformer_lens import HookedEncoderDecoder
    from transformer_lens.pretrained.weight_conversions.t5 import convert_t5_weights

    c = hf.config
    gated = c.is_gated_act
    tl = HookedEncoderDecoder(dict(
        d_model=c.d_model, d_head=c.d_kv, n_heads=c.num_heads, d_mlp=c.d_ff, d_vocab=c.vocab_size,
        n_layers=c.num_layers, n_ctx=64, eps=c.layer_norm_epsilon,
        act_fn="gelu_new" if gated else "relu", gated_mlp=gated,
        positional_embedding_type="relative_positional_bias",
        relative_attention_max_distance=c.relative_attention_max_distance,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        attention_dir="bidirectional", use_attn_scale=False, tie_word_embeddings=scaled,
        device="cpu"), move_to_device=False).eval()
    source = copy.deepcopy(hf)
    extra = {}
    if gated:
        for stack, i in (("encoder", 1), ("decoder", 2)):
            for l, block in enumerate(getattr(source, stack).block):
                dense = block.layer[i].DenseReluDense
                dense.wi = dense.wi_1  # TransformerLens's W_in: the linear half
                extra[f"{stack}.{l}.mlp.W_gate"] = dense.wi_0.weight.T
    state = dict(convert_t5_weights(source, tl.cfg), **extra)
    missing, unexpected = tl.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U",
                                              "IGNORE", "mask")) for k in missing), missing
    return tl


def t5_hf(variant: str, seed: int = 0):
    """A random tiny T5ForConditionalGeneration of `variant` (T5_VARIANTS), norms randomised."""
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**T5_SMALL, **T5_VARIANTS[variant])).eval()
    with torch.no_grad():  # norms start at one: randomise them so they count
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf
