"""Config: every architecture knob of the one forward, with TransformerLens's field names.

A `Config` is frozen and hashable because `jax.jit` takes it as a static argument; derived
fields (`n_heads`, `d_mlp`, `rotary_dim`, `attn_scale`, ...) are filled in at construction,
exactly as `HookedTransformerConfig.__post_init__` fills them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np

ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu", "relu2", "solu",
               "solu_ln", "xielu")
NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDINGS = ("standard", "rotary", "alibi", "shortformer", "relative_positional_bias")
DTYPES = ("float32", "bfloat16", "float16", "float64")


# Integer fields whose sentinel means "derive me", and those that may be zero.
_SENTINEL_INTS = {"n_heads": -1, "d_vocab": -1, "d_vocab_out": -1}
# n_layers=0 is TransformerLens's zero-layer model (embed -> unembed), used for bigram statistics.
_MAY_BE_ZERO = ("n_token_types", "n_layers", "checkpoint_index", "checkpoint_value",
                "decoder_start_token_id")


@dataclasses.dataclass(frozen=True)
class Config:
    """Architecture of a transformer; field names and defaults follow `HookedTransformerConfig`.

    Derived fields left at their sentinel (-1 / None) are filled in on construction:
    `n_heads = d_model // d_head`, `d_mlp = 4 * d_model`, `d_vocab_out = d_vocab`,
    `rotary_dim = d_head`, `attn_scale = sqrt(d_head)`, `initializer_range = 0.8 / sqrt(d_model)`.
    `d_vocab` may stay unset (-1) until a model with a tokenizer infers it, as in TransformerLens.
    """

    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    n_heads: int = -1
    d_mlp: Optional[int] = None
    d_vocab: int = -1
    d_vocab_out: int = -1
    act_fn: str = "relu"
    normalization_type: Optional[str] = "LN"
    final_rms: bool = False
    eps: float = 1e-5
    positional_embedding_type: str = "standard"
    rotary_dim: Optional[int] = None
    rotary_base: float = 10000.0
    # T5's relative position bias (positional_embedding_type="relative_positional_bias"): each
    # key-query offset falls in one of num_buckets buckets (exact near, logarithmic up to
    # max_distance; signed in bidirectional attention), and a learned [buckets, heads] table,
    # params["rel_pos_bias"]["W_rel_pos"], adds one score per bucket and head (TL's names).
    relative_attention_num_buckets: Optional[int] = None
    relative_attention_max_distance: Optional[int] = None
    # Gemma 3 / OLMo 3: local (sliding-window) layers rotate with their own base, and global
    # layers divide their rotary frequencies by a linear scaling factor (TransformerLens's names).
    rotary_base_local: Optional[float] = None
    rotary_scaling_factor: float = 1.0
    rotary_adjacent_pairs: bool = False
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    # YaRN rotary scaling (GPT-OSS; TransformerLens's names): each frequency blends from the
    # original (fast dims) to the original / yarn_factor (slow dims) along a linear ramp between
    # the dims that turn yarn_beta_fast and yarn_beta_slow times over the original context
    # (floored / ceiled when yarn_truncate); sin and cos scale by yarn_attention_factor.
    use_yarn_rope: bool = False
    yarn_factor: float = 1.0
    yarn_attention_factor: float = 1.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_original_max_position_embeddings: int = 4096
    yarn_truncate: bool = True
    # Qwen 1 (TransformerLens's names): past its training length train_seq_length (default
    # n_ctx), log-n attention scales the queries and dynamic NTK widens the rotary base. Both are
    # identities up to that length, and jtlens refuses longer inputs rather than run them
    # without (see `position_limit`).
    use_logn_attn: bool = False
    use_dynamic_ntk_rope: bool = False
    train_seq_length: Optional[int] = None
    n_key_value_heads: Optional[int] = None
    # Grouped-query attention's keys and values repeated to one per query head before hook_k /
    # hook_v (TransformerLens's flag): hooks see and edit [batch, pos, n_heads, d_head].
    ungroup_grouped_query_attention: bool = False
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    attn_only: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    scale_attn_by_inverse_layer_idx: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    use_local_attn: bool = False
    window_size: Optional[int] = None
    attn_types: Optional[tuple] = None
    use_normalization_before_and_after: bool = False
    use_qk_norm: bool = False
    # OLMo 2/3: q_norm / k_norm (RMS) normalise all heads' queries / keys together, over
    # [batch, pos, heads * d_head], instead of each head alone (use_qk_norm).
    qk_norm_over_heads: bool = False
    # OLMo 2/3 post-norm blocks: ln1 / ln2 normalise the attention / MLP output before the
    # residual add (before hook_attn_out / hook_mlp_out) and the sublayers read the raw residual.
    norm_sublayer_outputs: bool = False
    # OLMo 1: queries, keys and values are clamped to [-clip_qkv, clip_qkv] after their hooks
    # (and any q/k norm), before rotary.
    clip_qkv: Optional[float] = None
    # GPT-OSS (TransformerLens's name): a learned logit per head (attn.sinks) joins each query's
    # softmax as one more key and is dropped after it, so pattern rows sum to less than one.
    use_attention_sinks: bool = False
    attention_dir: str = "causal"
    # BERT-style encoders (TransformerLens's HookedEncoder): `post_ln` puts a LayerNorm after
    # each residual add (ln1 after attention, ln2 after the MLP) and after the embedding sum
    # (embed.ln), with no ln_final; `n_token_types` > 0 adds segment embeddings; `mlm_head` adds
    # the masked-LM head (dense, act_fn, LayerNorm) before the unembed. A post_ln model without
    # an MLM head (a BertModel checkpoint) has no unembed: it outputs its final residual.
    post_ln: bool = False
    # BLOOM: a LayerNorm (embed.ln) on the token embeddings, before hook_embed (TL's field).
    post_embedding_ln: bool = False
    n_token_types: int = 0
    mlm_head: bool = False
    # Encoder-decoders (T5, TransformerLens's HookedEncoderDecoder): the Config describes the
    # decoder, whose blocks attend to the encoder output after self-attention (ln2 before that
    # cross-attention, ln3 before the MLP). The encoder is the same stack, bidirectional and
    # without cross-attention (`encoder_decoder.encoder_config`), under params["encoder"].
    cross_attention: bool = False
    # T5 v1.0 multiplies the decoder output by d_model**-0.5 before the unembed (Hugging Face's
    # name; TransformerLens does it when its tie_word_embeddings is set).
    scale_decoder_outputs: bool = False
    decoder_start_token_id: Optional[int] = None  # the decoder's first token (TL's field)
    # Which optional hooks a capture-everything run includes (as in TransformerLens). Naming
    # one of these hooks explicitly always works, whatever the flag says.
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    use_hook_tokens: bool = False
    default_prepend_bos: bool = True
    tokenizer_prepends_bos: Optional[bool] = None
    model_name: str = "custom"
    original_architecture: Optional[str] = None
    tokenizer_name: Optional[str] = None
    dtype: str = "float32"
    initializer_range: float = -1.0
    # Which training checkpoint a model is (TransformerLens's fields; recorded, not used).
    checkpoint_index: Optional[int] = None
    checkpoint_label_type: Optional[str] = None
    checkpoint_value: Optional[int] = None
    # Mixture of experts (TransformerLens's names): `num_experts` gated experts per layer, each
    # token routed to its top `experts_per_token`. `moe_dispatch` picks an exact implementation:
    # "dense" runs every expert on every token (small models), "gather" runs each expert on at
    # most ceil(capacity_factor * tokens * k / num_experts) gathered tokens (large models; exact
    # while no expert overflows, and the overflow raises instead of dropping tokens silently).
    num_experts: Optional[int] = None
    experts_per_token: Optional[int] = None
    norm_topk_prob: bool = False
    moe_dispatch: str = "dense"
    moe_capacity_factor: float = 2.0
    # GPT-OSS's experts (transformers' names where TransformerLens has none): `moe_biases` gives
    # the router and every expert projection a bias; `moe_softmax_after_topk` softmaxes the k
    # chosen router logits (instead of taking the top k of a softmax over all experts); with
    # `swiglu_limit` set, an expert computes clamp(gate, max=limit) * sigmoid(swiglu_alpha * ...)
    # * (clamp(up, +-limit) + 1) instead of act_fn(gate) * up.
    moe_biases: bool = False
    moe_softmax_after_topk: bool = False
    # Qwen2-MoE: a shared gated expert of width shared_expert_d_mlp (params mlp.shared_expert.*)
    # runs on every token beside the routed ones, its output scaled by
    # sigmoid(x @ mlp.W_shared_expert_gate) (transformers' names; TransformerLens has none).
    shared_expert_d_mlp: Optional[int] = None
    swiglu_limit: Optional[float] = None
    swiglu_alpha: float = 1.702

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        self._check_types()

        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ValueError(f"Config: d_model={self.d_model} is not a multiple of "
                                 f"d_head={self.d_head}; pass n_heads explicitly")
            put("n_heads", self.d_model // self.d_head)
        if self.d_mlp is None and not self.attn_only:
            put("d_mlp", 4 * self.d_model)
        if self.d_vocab_out == -1:
            put("d_vocab_out", self.d_vocab)
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            put("rotary_dim", self.d_head)
        if self.attn_scale == -1.0:
            put("attn_scale", math.sqrt(self.d_head))
        if self.initializer_range == -1.0:
            put("initializer_range", 0.8 / math.sqrt(self.d_model))
        if self.attn_types is not None:
            put("attn_types", tuple(self.attn_types))
        self._validate()

    def _check_types(self):
        """Field types and signs, before anything is derived from them (d_head=0 would divide
        by zero; n_layers="2" or gated_mlp="no" would run as something else)."""
        def fail(msg):
            raise ValueError(f"Config: {msg}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _SENTINEL_INTS and v == _SENTINEL_INTS[f.name]:
                continue
            if f.type in ("int", "Optional[int]"):
                if v is None and f.type == "Optional[int]":
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    fail(f"{f.name}={v!r} must be an integer")
                if v < (0 if f.name in _MAY_BE_ZERO else 1):
                    fail(f"{f.name}={v} must be {'>= 0' if f.name in _MAY_BE_ZERO else 'positive'}")
            elif f.type == "bool" and not isinstance(v, (bool, np.bool_)):
                fail(f"{f.name}={v!r} must be True or False")
            elif f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))):
                fail(f"{f.name}={v!r} must be a number")
        if self.eps <= 0:
            fail(f"eps={self.eps} must be positive")

    def _validate(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(f"Config: {msg}")

        check(self.moe_dispatch in ("dense", "gather"),
              f"moe_dispatch={self.moe_dispatch!r} is not 'dense' or 'gather'")
        check((self.num_experts is None) == (self.experts_per_token is None),
              "num_experts and experts_per_token go together: set both for a mixture of experts")
        check(self.num_experts is None or self.experts_per_token <= self.num_experts,
              f"experts_per_token={self.experts_per_token} exceeds num_experts={self.num_experts}")
        check(self.num_experts or not (self.moe_biases or self.moe_softmax_after_topk
                                       or self.swiglu_limit is not None),
              "moe_biases, moe_softmax_after_topk and swiglu_limit describe experts: set "
              "num_experts and experts_per_token too")
        check(self.shared_expert_d_mlp is None or (self.num_experts and self.swiglu_limit is None
                                                   and not self.moe_biases),
              "shared_expert_d_mlp adds a shared expert beside routed ones: set num_experts and "
              "experts_per_token too (and no moe_biases / swiglu_limit, which it has no variant of)")
        check(not self.use_yarn_rope or self.positional_embedding_type == "rotary",
              "use_yarn_rope scales rotary embeddings: set positional_embedding_type='rotary'")
        check(not (self.use_yarn_rope and (self.use_NTK_by_parts_rope or self.rotary_scaling_factor != 1)),
              "use_yarn_rope is a rotary scaling of its own: it does not combine with "
              "use_NTK_by_parts_rope or rotary_scaling_factor; set only one")
        check(self.act_fn in ACTIVATIONS, f"act_fn={self.act_fn!r} is not one of {ACTIVATIONS}")
        check(self.normalization_type in NORMALIZATIONS,
              f"normalization_type={self.normalization_type!r} is not one of {NORMALIZATIONS}")
        check(self.positional_embedding_type in POSITIONAL_EMBEDDINGS,
              f"positional_embedding_type={self.positional_embedding_type!r} is not one of "
              f"{POSITIONAL_EMBEDDINGS}")
        check(self.attention_dir in ("causal", "bidirectional"),
              f"attention_dir={self.attention_dir!r} must be 'causal' or 'bidirectional'")
        check(self.dtype in DTYPES, f"dtype={self.dtype!r} is not one of {DTYPES}")
        check(not (self.is_layer_norm_activation() and self.gated_mlp),
              f"act_fn={self.act_fn!r} (a LayerNorm after the activation) is not supported with "
              f"gated_mlp")
        check(not (self.act_fn == "xielu" and self.mlm_head),
              "act_fn='xielu' (with per-layer parameters) is for the blocks' MLPs, not an MLM head")
        kv = self.n_kv_heads
        check(self.n_heads % kv == 0,
              f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={kv}")
        if self.positional_embedding_type == "rotary":
            check(self.rotary_dim % 2 == 0 and self.rotary_dim <= self.d_head,
                  f"rotary_dim={self.rotary_dim} must be even and at most d_head={self.d_head}")
        if self.post_ln:
            check(self.normalization_type == "LN" and self.positional_embedding_type == "standard",
                  "post_ln (BERT) blocks need normalization_type='LN' and standard positions")
            check(not (self.attn_only or self.parallel_attn_mlp or self.use_attn_in
                       or self.use_normalization_before_and_after),
                  "post_ln (BERT) blocks have no attn_only / parallel_attn_mlp / use_attn_in / "
                  "use_normalization_before_and_after variant")
        else:
            check(self.n_token_types == 0 and not self.mlm_head,
                  "n_token_types and mlm_head are parts of a BERT encoder: set post_ln=True")
        check(not (self.use_qk_norm and self.qk_norm_over_heads),
              "use_qk_norm (per head) and qk_norm_over_heads (all heads) are two kinds of q/k "
              "norm: set one")
        check(not (self.qk_norm_over_heads and self.ungroup_grouped_query_attention
                   and self.n_kv_heads != self.n_heads),
              "qk_norm_over_heads normalises the grouped keys; it does not combine with "
              "ungroup_grouped_query_attention")
        check((self.positional_embedding_type == "relative_positional_bias")
              == (self.relative_attention_num_buckets is not None
                  and self.relative_attention_max_distance is not None),
              "positional_embedding_type='relative_positional_bias' goes with "
              "relative_attention_num_buckets and relative_attention_max_distance: set all three")
        check(self.relative_attention_num_buckets is None or (
            self.relative_attention_num_buckets >= 4
            and self.relative_attention_max_distance > self.relative_attention_num_buckets // 2),
              f"relative_attention_num_buckets={self.relative_attention_num_buckets} must be >= 4 and "
              f"relative_attention_max_distance={self.relative_attention_max_distance} above half of "
              f"it (the exact buckets; T5 uses 32 and 128)")
        check(not self.cross_attention or (
            self.positional_embedding_type == "relative_positional_bias" and not (
                self.post_ln or self.parallel_attn_mlp or self.attn_only or self.norm_sublayer_outputs
                or self.use_normalization_before_and_after or self.num_experts or self.use_qk_norm
                or self.qk_norm_over_heads)),
              "cross_attention (T5 decoder blocks) needs positional_embedding_type="
              "'relative_positional_bias' and has no post_ln / parallel_attn_mlp / attn_only / "
              "norm_sublayer_outputs / use_normalization_before_and_after / MoE / q-k norm variant")
        check(self.cross_attention or not self.scale_decoder_outputs,
              "scale_decoder_outputs is part of an encoder-decoder (T5): set cross_attention=True")
        check(self.clip_qkv is None or self.clip_qkv > 0, f"clip_qkv={self.clip_qkv} must be positive")
        check(not (self.norm_sublayer_outputs and (self.post_ln or self.parallel_attn_mlp
                                                   or self.use_normalization_before_and_after)),
              "norm_sublayer_outputs (OLMo 2 blocks) has no post_ln / parallel_attn_mlp / "
              "use_normalization_before_and_after variant")
        if self.use_local_attn:
            check(self.window_size is not None and self.attn_types is not None,
                  "use_local_attn needs window_size and attn_types")
            check(len(self.attn_types) == self.n_layers,
                  f"attn_types has {len(self.attn_types)} entries for {self.n_layers} layers")
            check(set(self.attn_types) <= {"global", "local"},
                  f"attn_types entries must be 'global' or 'local', got {set(self.attn_types)}")

    @property
    def learned_positions(self) -> bool:
        """Whether the model has a learned position table W_pos: "standard" adds it to the
        residual stream, "shortformer" only to the query and key inputs of every block."""
        return self.positional_embedding_type in ("standard", "shortformer")

    @property
    def position_limit(self) -> Optional[int]:
        """The longest sequence the forward runs (None: any): n_ctx for learned positions;
        the training length under Qwen 1's use_logn_attn / use_dynamic_ntk_rope, which change
        attention past it in ways jtlens does not compute."""
        if self.use_logn_attn or self.use_dynamic_ntk_rope:
            return self.train_seq_length or self.n_ctx
        return self.n_ctx if self.learned_positions else None

    @property
    def n_kv_heads(self) -> int:
        """Number of key/value heads (n_heads unless grouped-query attention)."""
        return self.n_key_value_heads or self.n_heads

    @property
    def final_norm_type(self) -> Optional[str]:
        """Norm type of ln_final: TransformerLens's `final_rms` swaps a LayerNorm for RMS."""
        if self.post_ln:
            return None  # post-LN blocks end normalised; BERT has no ln_final
        if self.final_rms and self.normalization_type in ("LN", "LNPre"):
            return "RMS" if self.normalization_type == "LN" else "RMSPre"
        return self.normalization_type

    def encoder_config(self) -> "Config":
        """An encoder-decoder's encoder stack: the decoder's blocks, bidirectional, without
        cross-attention (TransformerLens's HookedEncoderDecoder builds both from one config)."""
        if not self.cross_attention:
            raise ValueError("encoder_config() is for encoder-decoders (cross_attention=True)")
        return self.replace(cross_attention=False, attention_dir="bidirectional",
                            scale_decoder_outputs=False)

    def is_layer_norm_activation(self) -> bool:
        """Whether act_fn normalises its output (TransformerLens's `*_ln` activations)."""
        return self.act_fn.endswith("_ln")

    @property
    def device(self) -> str:
        """The platform of JAX's default device ("cpu", "gpu", "tpu"); params live wherever
        `jax.device_put` put them (see `HookedTransformer.to`)."""
        import jax

        return jax.devices()[0].platform

    @classmethod
    def unwrap(cls, config: Any) -> "Config":
        """A Config from a Config, a dict of its fields, or a TransformerLens config."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        if hasattr(config, "to_dict"):
            return config_from_tl(config)
        raise TypeError(f"Config.unwrap: expected a Config, a dict or a TransformerLens config, "
                        f"got {type(config).__name__}")

    def replace(self, **changes: Any) -> "Config":
        """A copy with fields changed (derived fields are recomputed only if reset)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build from a dict, raising on keys that are not Config fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Config: unknown fields {unknown}")
        return cls(**d)


def _frozen_setattr(self, name, value):
    # Config is a jit static argument, so it must not change under a compiled function.
    raise dataclasses.FrozenInstanceError(
        f"Config is frozen (jit takes it as a static argument), so cfg.{name} = ... cannot "
        f"work; make a new one: `model.cfg = model.cfg.replace({name}={value!r})`")


Config.__setattr__ = _frozen_setattr
HookedTransformerConfig = Config  # TransformerLens's name


# TransformerLens picks these behaviours by original_architecture; jtlens has knobs for them.
_TL_ARCHITECTURE_KNOBS = {
    "Olmo2ForCausalLM": dict(qk_norm_over_heads=True, norm_sublayer_outputs=True),
    "Olmo3ForCausalLM": dict(qk_norm_over_heads=True, norm_sublayer_outputs=True),
    "OlmoeForCausalLM": dict(qk_norm_over_heads=True),
    # (TransformerLens's GptOssMoE hard-codes these)
    "GptOssForCausalLM": dict(moe_biases=True, moe_softmax_after_topk=True, swiglu_limit=7.0,
                              swiglu_alpha=1.702),
}


def config_from_tl(tl_cfg: Any) -> Config:
    """A jtlens Config from a HookedTransformerConfig (or its dict), field by field, plus the
    knobs of behaviours TransformerLens keys on the architecture's name."""
    src = tl_cfg if isinstance(tl_cfg, Mapping) else vars(tl_cfg)
    kwargs = dict(_TL_ARCHITECTURE_KNOBS.get(src.get("original_architecture"), {}))
    for f in dataclasses.fields(Config):
        if f.name in src and src[f.name] is not None or f.name in ("d_mlp", "rotary_dim", "normalization_type"):
            value = src.get(f.name)
            if f.name == "dtype":
                value = str(value).replace("torch.", "")
            if f.name == "attn_types" and value is not None:
                value = tuple(value)
            kwargs[f.name] = value
    if src.get("positional_embedding_type") != "rotary":
        kwargs["rotary_dim"] = None
    return Config(**kwargs)
