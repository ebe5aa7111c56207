"""TransformerLens 3.9 as the oracle: build HookedTransformers offline and compare caches.

Shared by the parity tests: `CONFIGS` (one TransformerLens config per architecture family),
`tl_model`/`to_jtlens` (the same random weights on both sides), `pair` (a TransformerLens model
and a jtlens facade sharing weights and a BPE tokenizer). Importing it skips a test module when
torch or transformer_lens is missing.
"""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")
tlp = pytest.importorskip("transformer_lens.patching")

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
    "qwen3_like": dict(BASE, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                       gated_mlp=True, final_rms=True, use_qk_norm=True, n_key_value_heads=2,
                       use_split_qkv_input=False),
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
            if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".w")):
                p.add_(0.1 * torch.randn_like(p))
    return model


def to_jtlens(model):
    cfg = config_from_tl(model.cfg)
    return cfg, params_from_state_dict(model.state_dict(), cfg)


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


def assert_caches_match(ours, theirs: dict, atol: float = 1e-4):
    """Every TransformerLens activation exists in ours under the same name and matches."""
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
