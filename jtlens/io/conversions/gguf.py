"""GGUF checkpoints (llama.cpp's format) -> jtlens, without torch.

The file is read by `gguf_file` (its metadata and tensor infos; the tensors stay memory-mapped)
and dequantised with the `gguf` package's numpy kernels (llama.cpp's own). Its metadata becomes a Hugging Face config dict and its tensors get their Hugging Face names, dequantised to
float32 with llama.cpp's layout changes undone (the Q/K row permutation of Llama, NeoX's fused
q/k/v order, GPT-2's transposed Conv1D weights, Gemma's norm offset, stacked experts). The
family converters of
this package then build the params, as strictly as from a Hugging Face folder: every tensor of
the file is consumed, every shape checked before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from jtlens.io.conversions.common import ConversionError, TensorReader, check_and_cast
from jtlens.io.conversions.gguf_file import GGUFFormatError, read_gguf_file
from jtlens.core.progress import shown

# GGUF `general.architecture` -> the Hugging Face class whose converter it reuses.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",  # Llama, Mistral-style, SmolLM ...: llama.cpp calls them all llama
    # (with llama.expert_count set: Mixtral, a llama whose MLPs are mixtures of experts)
    "qwen": "QWenLMHeadModel",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "phi2": "PhiForCausalLM",
    "bloom": "BloomForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gptneox": "GPTNeoXForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "t5": "T5ForConditionalGeneration",  # an encoder-decoder: load it with HookedEncoderDecoder
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
}
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens")


def read_gguf(path):
    """The file's `GGUFFile` (metadata and tensor infos); an unreadable or truncated file is a
    ConversionError."""
    path = Path(path)
    try:
        reader = read_gguf_file(path)
    except (GGUFFormatError, OSError) as err:
        raise ConversionError(f"{path}: not a readable GGUF file ({err}); is it complete?") from None
    last = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if last > path.stat().st_size:
        raise ConversionError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes, its "
                              f"tensors need {last}); download it again")
    return reader


def metadata(reader, key: str, default=KeyError):
    """One metadata value (a str, number, bool or list), or `default` when absent."""
    if key not in reader.metadata:
        if default is KeyError:
            raise ConversionError(f"{reader.path}: metadata key {key!r} is missing")
        return default
    return reader.metadata[key]


def architecture(reader) -> str:
    """The file's `general.architecture`, checked against the supported list."""
    arch = metadata(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{reader.path}: GGUF architecture {arch!r} is not supported; "
                              f"supported: {sorted(ARCHITECTURES)}")
    return arch


def hf_config(reader) -> dict:
    """GGUF metadata -> a Hugging Face config dict for the family converter."""
    path, arch = reader.path, architecture(reader)
    names = {t.name for t in reader.tensors}

    def get(key, default=KeyError):
        return metadata(reader, f"{arch}.{key}", default)

    if not all(k in reader.metadata for k in TOKENIZER_KEYS):
        raise ConversionError(f"{path}: no tokenizer in the GGUF metadata (keys {TOKENIZER_KEYS} "
                              f"missing); jtlens needs the tokenizer the file was made with")
    if "rope_freqs.weight" in names:
        raise ConversionError(f"{path}: per-frequency rotary factors (rope_freqs.weight, Llama-3.1 "
                              f"style scaling) are not supported for GGUF files")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none" and not (arch == "gemma3" and scaling == "linear"):
        raise ConversionError(f"{path}: rotary scaling {scaling!r} is not supported for GGUF files")
    D, H = get("embedding_length"), get("attention.head_count")
    n_kv = get("attention.head_count_kv", H)
    if isinstance(n_kv, list):  # per-layer counts: only a constant one has a place in Config
        if len(set(n_kv)) != 1:
            raise ConversionError(f"{path}: key/value head counts differ across layers ({n_kv})")
        n_kv = n_kv[0]
    d_head = get("attention.key_length", D // H)
    vocab = get("vocab_size", len(reader.metadata["tokenizer.ggml.tokens"]))
    common = dict(architectures=[ARCHITECTURES[arch]], vocab_size=vocab,
                  _name_or_path=metadata(reader, "general.name", Path(path).stem),
                  tie_word_embeddings="output.weight" not in names)
    if arch == "bloom":
        return dict(common, hidden_size=D, n_layer=get("block_count"), n_head=H,
                    n_inner=get("feed_forward_length"), seq_length=get("context_length"),
                    layer_norm_epsilon=get("attention.layer_norm_epsilon"))
    if arch == "t5":
        # As llama.cpp runs the file: a gated MLP (GELU) exactly when ffn_gate tensors are there,
        # relative distances bucketed up to 128 (fixed in llama.cpp), and the decoder output
        # never scaled by d_model**-0.5 before the unembedding, tied or not.
        gated = "enc.blk.0.ffn_gate.weight" in names
        return dict(common, d_model=D, num_layers=get("block_count"), num_heads=H,
                    d_kv=get("attention.key_length"), d_ff=get("feed_forward_length"),
                    n_positions=get("context_length"),
                    layer_norm_epsilon=get("attention.layer_norm_rms_epsilon"),
                    relative_attention_num_buckets=get("attention.relative_buckets_count"),
                    relative_attention_max_distance=128, scale_decoder_outputs=False,
                    feed_forward_proj="gated-gelu" if gated else "relu",
                    decoder_start_token_id=get("decoder_start_token_id", None))
    if arch == "gpt2":
        return dict(common, n_embd=D, n_layer=get("block_count"), n_head=H,
                    n_positions=get("context_length"), n_inner=get("feed_forward_length"),
                    layer_norm_epsilon=get("attention.layer_norm_epsilon"))
    rotary = dict(rope_theta=float(get("rope.freq_base", 10000.0)),
                  partial_rotary_factor=get("rope.dimension_count", d_head) / d_head)
    sizes = dict(hidden_size=D, num_hidden_layers=get("block_count"), num_attention_heads=H,
                 intermediate_size=get("feed_forward_length"),
                 max_position_embeddings=get("context_length"))
    if arch == "qwen":  # llama.cpp runs Qwen 1 without log-n attention or dynamic NTK rotary
        return dict(common, hidden_size=D, num_hidden_layers=get("block_count"),
                    num_attention_heads=H, intermediate_size=get("feed_forward_length"),
                    seq_length=get("context_length"), rotary_emb_base=rotary["rope_theta"],
                    rotary_pct=rotary["partial_rotary_factor"],
                    layer_norm_epsilon=get("attention.layer_norm_rms_epsilon"))
    if arch == "phi2":
        return dict(common, **sizes, **rotary, hidden_act="gelu_new", num_key_value_heads=n_kv,
                    layer_norm_eps=get("attention.layer_norm_epsilon"))
    if arch == "gptneox":
        return dict(common, **sizes, **rotary, hidden_act="gelu",
                    layer_norm_eps=get("attention.layer_norm_epsilon"),
                    use_parallel_residual=bool(get("use_parallel_residual", True)))
    hf = dict(common, **sizes, **rotary, num_key_value_heads=n_kv, head_dim=d_head,
              rms_norm_eps=get("attention.layer_norm_rms_epsilon"))
    if arch == "olmoe":  # llama.cpp leaves OLMoE's top-k routing weights as they are
        hf.update(num_experts=get("expert_count"), num_experts_per_tok=get("expert_used_count"),
                  norm_topk_prob=False, clip_qkv=get("attention.clamp_kqv", None))
    elif arch in ("qwen2moe", "qwen3moe"):
        # llama.cpp renormalises qwen3moe's top-k routing weights, not qwen2moe's
        hf.update(num_experts=get("expert_count"), num_experts_per_tok=get("expert_used_count"),
                  moe_intermediate_size=get("expert_feed_forward_length"),
                  norm_topk_prob=arch == "qwen3moe")
        if arch == "qwen2moe":
            hf["shared_expert_intermediate_size"] = get("expert_shared_feed_forward_length")
    elif get("expert_count", 0):
        if arch != "llama":
            raise ConversionError(f"{path}: mixtures of experts are supported for GGUF architectures "
                                  f"'llama' (Mixtral) and 'olmoe', not {arch!r}")
        # llama.cpp renormalises a llama's top-k routing weights, as Mixtral does
        hf.update(architectures=["MixtralForCausalLM"], num_local_experts=get("expert_count"),
                  num_experts_per_tok=get("expert_used_count"))
    if arch.startswith("gemma"):
        hf["hidden_activation"] = "gelu_pytorch_tanh"
    if arch in ("gemma2", "gemma3"):
        # llama.cpp scales queries by 1/sqrt(head_dim), except the 27B models (Gemma 2: 46
        # layers, Gemma 3: 62), which use 1/sqrt(d_model / n_heads); the file has no
        # query_pre_attn_scalar of its own.
        scalar = D // H if hf["num_hidden_layers"] == {"gemma2": 46, "gemma3": 62}[arch] else d_head
        hf.update(query_pre_attn_scalar=scalar, sliding_window=get("attention.sliding_window"),
                  attn_logit_softcapping=get("attn_logit_softcapping", None),
                  final_logit_softcapping=get("final_logit_softcapping", None))
    if arch == "gemma3":
        hf.update(_gemma3_layers(get, hf["num_hidden_layers"], rotary["rope_theta"], scaling))
    if arch == "phi3":
        hf["sliding_window"] = get("attention.sliding_window", None)
    return hf


def _gemma3_layers(get, n_layers: int, theta: float, scaling: str) -> dict:
    """Gemma 3's layer kinds and per-kind rotary, as llama.cpp reads them: every sixth layer
    global (unless the file lists the sliding ones), sliding layers at base 10000 (unless
    rope.freq_base_swa says otherwise), linear scaling on the global layers only."""
    pattern = get("attention.sliding_window_pattern", None)
    sliding = pattern if isinstance(pattern, list) else [l % 6 < 5 for l in range(n_layers)]
    full = dict(rope_type=scaling if scaling == "linear" else "default", rope_theta=theta)
    if scaling == "linear":
        full["factor"] = float(get("rope.scaling.factor"))
    return dict(layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
                rope_parameters={"full_attention": full, "sliding_attention": dict(
                    rope_type="default", rope_theta=float(get("rope.freq_base_swa", 10000.0)))})


# ----------------------------------------------------------------------------- tensor names
# Per family: GGUF name -> (Hugging Face name, expected shape as stored in the file, numpy order).
# Shapes use the config: D model width, V vocabulary, M MLP width (an expert's in a mixture; m:
# half of it, Qwen 1's MLP), S a shared expert's width, E experts, C context, L layers, and for
# attention Q = n_heads * d_head, K = n_kv_heads * d_head.
LLAMA_BLOCK = {
    "attn_norm": ("input_layernorm", "D"), "ffn_norm": ("post_attention_layernorm", "D"),
    "attn_q": ("self_attn.q_proj", "Q,D"), "attn_k": ("self_attn.k_proj", "K,D"),
    "attn_v": ("self_attn.v_proj", "K,D"), "attn_output": ("self_attn.o_proj", "D,Q"),
    "attn_q_norm": ("self_attn.q_norm", "d"), "attn_k_norm": ("self_attn.k_norm", "d"),
    "ffn_gate": ("mlp.gate_proj", "M,D"), "ffn_up": ("mlp.up_proj", "M,D"),
    "ffn_down": ("mlp.down_proj", "D,M"),
}
LLAMA_TOP = {"token_embd": ("model.embed_tokens", "V,D"), "output_norm": ("model.norm", "D"),
             "output": ("lm_head", "V,D")}
GEMMA2_BLOCK = dict(LLAMA_BLOCK, ffn_norm=("pre_feedforward_layernorm", "D"),  # Gemma 2 and 3
                    post_attention_norm=("post_attention_layernorm", "D"),
                    post_ffw_norm=("post_feedforward_layernorm", "D"))
OLMO2_BLOCK = dict(  # norms on the sublayer outputs; q/k norms over all heads
    {k: v for k, v in LLAMA_BLOCK.items() if k not in ("attn_norm", "ffn_norm")},
    post_attention_norm=("post_attention_layernorm", "D"),
    post_ffw_norm=("post_feedforward_layernorm", "D"),
    attn_q_norm=("self_attn.q_norm", "Q"), attn_k_norm=("self_attn.k_norm", "K"))
MIXTRAL_EXPERTS = {  # llama.cpp stacks the experts ({e}: each expert's Hugging Face name)
    "ffn_gate_inp": ("block_sparse_moe.gate", "E,D"),
    "ffn_gate_exps": ("block_sparse_moe.experts.{e}.w1", "E,M,D"),
    "ffn_up_exps": ("block_sparse_moe.experts.{e}.w3", "E,M,D"),
    "ffn_down_exps": ("block_sparse_moe.experts.{e}.w2", "E,D,M")}
MLP_EXPERTS = {"ffn_gate_inp": ("mlp.gate", "E,D"),  # OLMoE's and Qwen-MoE's names
               "ffn_gate_exps": ("mlp.experts.{e}.gate_proj", "E,M,D"),
               "ffn_up_exps": ("mlp.experts.{e}.up_proj", "E,M,D"),
               "ffn_down_exps": ("mlp.experts.{e}.down_proj", "E,D,M")}
OLMOE_BLOCK = dict(LLAMA_BLOCK, attn_q_norm=("self_attn.q_norm", "Q"),  # q/k norms over all heads
                   attn_k_norm=("self_attn.k_norm", "K"), **MLP_EXPERTS)
QWEN2MOE_BLOCK = dict(  # the shared expert (width S), its gate squeezed to [D] by llama.cpp
    LLAMA_BLOCK, **MLP_EXPERTS, ffn_gate_inp_shexp=("mlp.shared_expert_gate", "D"),
    ffn_gate_shexp=("mlp.shared_expert.gate_proj", "S,D"),
    ffn_up_shexp=("mlp.shared_expert.up_proj", "S,D"),
    ffn_down_shexp=("mlp.shared_expert.down_proj", "D,S"))
T5_ATTENTION = {"attn_q": ("SelfAttention.q", "Q,D"), "attn_k": ("SelfAttention.k", "Q,D"),
                "attn_v": ("SelfAttention.v", "Q,D"), "attn_o": ("SelfAttention.o", "D,Q"),
                "attn_rel_b": ("SelfAttention.relative_attention_bias", "B,H"),
                "attn_norm": ("layer_norm", "D")}
T5_MLP = {"ffn_norm": ("layer_norm", "D"), "ffn_gate": ("DenseReluDense.wi_0", "M,D"),
          "ffn_up": ("DenseReluDense.wi", "M,D"), "ffn_down": ("DenseReluDense.wo", "D,M")}
# Stacks of blocks named `<stack>.blk.N.*` (T5): stack -> (Hugging Face prefix, table); T5's
# sublayers are layer.0 (self-attention), [layer.1 (cross-attention)], then the MLP.
STACKED_BLOCKS = {"t5": {
    "enc": ("encoder.block", {**{k: (f"layer.0.{v}", s) for k, (v, s) in T5_ATTENTION.items()},
                              **{k: (f"layer.1.{v}", s) for k, (v, s) in T5_MLP.items()}}),
    "dec": ("decoder.block", {**{k: (f"layer.0.{v}", s) for k, (v, s) in T5_ATTENTION.items()},
                              **{f"cross_{k}": (f"layer.1.{v.replace('SelfAttention', 'EncDecAttention')}", s)
                                 for k, (v, s) in T5_ATTENTION.items()},
                              **{k: (f"layer.2.{v}", s) for k, (v, s) in T5_MLP.items()}})}}
BLOCKS = {
    "llama": ("model.layers", dict(LLAMA_BLOCK, **MIXTRAL_EXPERTS)),
    "olmoe": ("model.layers", OLMOE_BLOCK),
    "qwen2moe": ("model.layers", QWEN2MOE_BLOCK),
    "qwen3moe": ("model.layers", dict(LLAMA_BLOCK, **MLP_EXPERTS)),
    "qwen": ("transformer.h", {  # (its MLP is half as wide as feed_forward_length: m)
        "attn_norm": ("ln_1", "D"), "ffn_norm": ("ln_2", "D"), "attn_qkv": ("attn.c_attn", "3D,D"),
        "attn_output": ("attn.c_proj", "D,D"), "ffn_up": ("mlp.w1", "m,D"),
        "ffn_gate": ("mlp.w2", "m,D"), "ffn_down": ("mlp.c_proj", "D,m")}),
    "qwen2": ("model.layers", LLAMA_BLOCK),
    "qwen3": ("model.layers", LLAMA_BLOCK), "gemma": ("model.layers", LLAMA_BLOCK),
    "gemma2": ("model.layers", GEMMA2_BLOCK), "gemma3": ("model.layers", GEMMA2_BLOCK),
    "olmo2": ("model.layers", OLMO2_BLOCK),
    "phi3": ("model.layers", dict(LLAMA_BLOCK, attn_qkv=("self_attn.qkv_proj", "Q+2K,D"),
                                  ffn_up=("mlp.gate_up_proj", "2M,D"))),
    "phi2": ("model.layers", {
        "attn_norm": ("input_layernorm", "D"), "attn_q": ("self_attn.q_proj", "Q,D"),
        "attn_k": ("self_attn.k_proj", "K,D"), "attn_v": ("self_attn.v_proj", "K,D"),
        "attn_output": ("self_attn.dense", "D,Q"), "ffn_up": ("mlp.fc1", "M,D"),
        "ffn_down": ("mlp.fc2", "D,M")}),
    "gpt2": ("transformer.h", {
        "attn_norm": ("ln_1", "D"), "ffn_norm": ("ln_2", "D"),
        "attn_qkv": ("attn.c_attn", "3D,D"), "attn_output": ("attn.c_proj", "D,D"),
        "ffn_up": ("mlp.c_fc", "M,D"), "ffn_down": ("mlp.c_proj", "D,M")}),
    "bloom": ("transformer.h", {
        "attn_norm": ("input_layernorm", "D"), "ffn_norm": ("post_attention_layernorm", "D"),
        "attn_qkv": ("self_attention.query_key_value", "3D,D"),
        "attn_output": ("self_attention.dense", "D,D"), "ffn_up": ("mlp.dense_h_to_4h", "M,D"),
        "ffn_down": ("mlp.dense_4h_to_h", "D,M")}),
    "gptneox": ("gpt_neox.layers", {
        "attn_norm": ("input_layernorm", "D"), "ffn_norm": ("post_attention_layernorm", "D"),
        "attn_qkv": ("attention.query_key_value", "3D,D"), "attn_output": ("attention.dense", "D,D"),
        "ffn_up": ("mlp.dense_h_to_4h", "M,D"), "ffn_down": ("mlp.dense_4h_to_h", "D,M")}),
}
TOPS = {**{a: LLAMA_TOP for a in ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2",
                                   "phi3", "olmoe", "qwen2moe", "qwen3moe")},
        "gpt2": {"token_embd": ("transformer.wte", "V,D"), "position_embd": ("transformer.wpe", "C,D"),
                 "output_norm": ("transformer.ln_f", "D"), "output": ("lm_head", "V,D")},
        "qwen": {"token_embd": ("transformer.wte", "V,D"), "output_norm": ("transformer.ln_f", "D"),
                 "output": ("lm_head", "V,D")},
        "phi2": {"token_embd": ("model.embed_tokens", "V,D"),
                 "output_norm": ("model.final_layernorm", "D"), "output": ("lm_head", "V,D")},
        "bloom": {"token_embd": ("transformer.word_embeddings", "V,D"),
                  "token_embd_norm": ("transformer.word_embeddings_layernorm", "D"),
                  "output_norm": ("transformer.ln_f", "D"), "output": ("lm_head", "V,D")},
        "gptneox": {"token_embd": ("gpt_neox.embed_in", "V,D"),
                    "output_norm": ("gpt_neox.final_layer_norm", "D"),
                    "output": ("embed_out", "V,D")},
        "t5": {"token_embd": ("shared", "V,D"), "enc.output_norm": ("encoder.final_layer_norm", "D"),
               "dec.output_norm": ("decoder.final_layer_norm", "D"), "output": ("lm_head", "V,D")}}


def _dims(hf: dict) -> dict:
    get = lambda *keys: next(hf[k] for k in keys if k in hf)  # noqa: E731
    D, H = get("hidden_size", "n_embd", "d_model"), get("num_attention_heads", "n_head", "num_heads")
    d = hf.get("head_dim") or hf.get("d_kv") or D // H
    M = hf.get("moe_intermediate_size") or get("intermediate_size", "n_inner", "d_ff")  # (Qwen-MoE experts)
    return dict(D=D, V=hf["vocab_size"], M=M, m=M // 2, S=hf.get("shared_expert_intermediate_size"),
                E=hf.get("num_local_experts") or hf.get("num_experts", 0),
                C=get("max_position_embeddings", "n_positions", "seq_length"), d=d, Q=H * d,
                K=hf.get("num_key_value_heads", H) * d, H=H,
                B=hf.get("relative_attention_num_buckets", 0),
                gated=str(hf.get("feed_forward_proj", "")).startswith("gated-"))


def _shape(spec: str, dims: dict) -> tuple:
    def size(term):
        factor = int(term[:-1]) if term[:-1] else 1
        return factor * dims[term[-1]]
    return tuple(sum(size(t) for t in axis.split("+")) for axis in spec.split(","))


def hf_name(arch: str, name: str, dims: dict) -> tuple[str, tuple]:
    """A GGUF tensor name -> (Hugging Face name, expected shape in the file)."""
    stem, _, kind = name.rpartition(".")
    parts = stem.split(".")
    if kind in ("weight", "bias"):
        if "blk" in parts[:2] and len(parts) == parts.index("blk") + 3 and parts[-2].isdigit():
            stack = parts[0] if parts[0] != "blk" else None  # `enc.blk.N.*`: T5's stacks
            prefix, table = (STACKED_BLOCKS.get(arch, {}).get(stack, (None, {})) if stack
                             else BLOCKS.get(arch, (None, {})))
            if parts[-1] in table:
                hf, spec = table[parts[-1]]
                if hf.endswith(".wi") and dims["gated"]:  # llama.cpp's ffn_up: wi, or wi_1 beside wi_0
                    hf += "_1"
                shape = _shape(spec, dims)
                return f"{prefix}.{parts[-2]}.{hf}.{kind}", shape if kind == "weight" else shape[:1]
        elif stem in TOPS[arch]:
            hf, spec = TOPS[arch][stem]
            shape = _shape(spec, dims)
            return f"{hf}.{kind}", shape if kind == "weight" else shape[:1]
    raise ConversionError(f"tensor {name!r} has no place in a {arch} model")


def _undo_rotary_permutation(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp interleaves each head's rotary halves in Q and K rows; restore HF's order."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _fixer(arch: str, hf: dict) -> Callable[[str, np.ndarray], np.ndarray]:
    """The per-tensor inverse of llama.cpp's converter for `arch` (GGUF name, array) -> array."""
    H, n_kv = hf.get("num_attention_heads"), hf.get("num_key_value_heads")

    def fix(name, w):
        if arch == "llama" and ".attn_q." in name:
            return _undo_rotary_permutation(w, H)
        if arch == "llama" and ".attn_k." in name:
            return _undo_rotary_permutation(w, n_kv)
        if name.endswith("ffn_gate_inp_shexp.weight"):
            return w.reshape(1, -1)  # Hugging Face's shared expert gate: a Linear to one output
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            return w - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w) norm scale
        if arch in ("gptneox", "bloom") and ".attn_qkv." in name:
            # llama.cpp reorders NeoX's and BLOOM's (head, qkv, d_head) rows to (qkv, head, d_head)
            n = hf.get("num_attention_heads") or hf["n_head"]
            return w.reshape(3, n, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)
        if arch == "gpt2" and w.ndim == 2 and name.startswith("blk."):
            return w.T  # llama.cpp stores GPT-2's Conv1D weights as [out, in]
        return w
    return fix


def hf_tensors(reader, hf: dict, progress: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the file, dequantised to float32, under its Hugging Face name."""
    from gguf.quants import dequantize

    path, arch, dims = reader.path, architecture(reader), _dims(hf)
    fix, out = _fixer(arch, hf), {}
    for t in tqdm(reader.tensors, desc=f"dequantising {Path(path).name}", unit="tensor",
                  disable=not shown(progress)):
        try:
            name, want = hf_name(arch, t.name, dims)
        except ConversionError as err:
            raise ConversionError(f"{path}: {err}") from None
        got = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest axis first
        if got != want:
            raise ConversionError(f"{path}: tensor {t.name!r} has shape {got}, the metadata implies "
                                  f"{want}")
        w = fix(t.name, np.asarray(dequantize(_rows(t), t.tensor_type), np.float32).reshape(got))
        if "{e}" in name:  # stacked experts: one Hugging Face tensor per expert
            out.update((name.format(e=e), w[e]) for e in range(len(w)))
        else:
            out[name] = w
    return out


def _rows(t) -> np.ndarray:
    """A tensor's bytes as [rows, bytes per row]: the quantised kernels work row by row."""
    from gguf.constants import GGML_QUANT_SIZES

    block, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
    return t.data.reshape(-1, t.shape[0] // block * block_bytes)


def convert_gguf(path, progress: bool = True, reader=None):
    """(cfg, params) from a GGUF file, through the family converter of its architecture.
    `reader`: the file's `read_gguf` when the caller has it (its tokenizer reads it too)."""
    from jtlens.io.conversions import family

    reader = read_gguf(path) if reader is None else reader
    hf = hf_config(reader)
    module = family(hf)
    cfg = module.config_from_hf(hf)
    tensors = TensorReader(hf_tensors(reader, hf, progress), str(path),
                           tied_embeddings=hf["tie_word_embeddings"])
    try:
        params = module.params_from_hf(tensors, cfg)
        tensors.finish()
        return cfg, check_and_cast(params, cfg, dtype="float32")
    except ConversionError as err:
        if str(path) in str(err):
            raise
        raise ConversionError(f"{path}: {err}") from None
