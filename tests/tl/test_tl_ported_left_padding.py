"""TransformerLens 3.x's tests/integration/test_left_padding.py and test_attention_mask.py, ported
(see tests/tl_port.py) on small random models with gpt2-like (BOS == pad) and opt-like (own
pad) tokenizers, on TransformerLens 3.9 and on jtlens.

test_pos_embed_with_cache concatenates the two attention masks itself where TL calls
`TransformerLensKeyValueCache.append_attention_mask` (a concatenation along positions): jtlens's
KeyValueCache keeps its mask inside the forward, and the test is about `pos_embed`."""

import copy

import numpy as np
import pytest

from tests.oracle import tokenizer
from tests.tl_port import CFG, lib, np_  # noqa: F401  (lib is the fixture)

PROMPTS = ["Hello world!", "How are you today?", "I'm fine, thank you.", "I am happy."]


@pytest.fixture(params=["bos-is-pad", "own-pad"], ids=["gpt2-like", "opt-like"])
def model(lib, request):
    m = lib.HookedTransformer(lib.Config(**dict(CFG, d_vocab=302, n_layers=3, n_ctx=64)))
    tok = copy.deepcopy(tokenizer())  # tokenizer() is shared: add the pad token to a copy
    if request.param == "own-pad":
        tok.add_special_tokens({"pad_token": "<pad>"})
    m.set_tokenizer(tok)
    return m


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.slow
def test_pos_embed(lib, model, padding_side, prepend_bos):
    model.tokenizer.padding_side = padding_side
    tokens = model.to_tokens(PROMPTS, prepend_bos=prepend_bos)
    str_tokens = model.to_str_tokens(PROMPTS, prepend_bos=prepend_bos)
    mask = lib.utils.get_attention_mask(model.tokenizer, tokens, prepend_bos)
    out = np_(model.pos_embed(tokens, 0, attention_mask=mask))
    W_pos = np_(model.pos_embed.W_pos)
    assert out.shape == (tokens.shape[0], tokens.shape[1], W_pos.shape[1])
    target = W_pos[sum([list(range(len(t))) for t in str_tokens], [])]
    keep = np_(mask).astype(bool)
    assert np.allclose(out[keep], target, atol=1e-4)
    assert out[~keep].sum() == 0


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prepend_bos", [True, False])
def test_pos_embed_with_cache(lib, model, padding_side, prepend_bos):
    model.tokenizer.padding_side = padding_side
    tokens = model.to_tokens(PROMPTS, prepend_bos=prepend_bos)
    tokens_2 = model.to_tokens(PROMPTS, prepend_bos=False)
    str_tokens = model.to_str_tokens(PROMPTS, prepend_bos=prepend_bos)
    str_tokens_2 = model.to_str_tokens(PROMPTS, prepend_bos=False)
    mask = np_(lib.utils.get_attention_mask(model.tokenizer, tokens, prepend_bos))
    mask_2 = np_(lib.utils.get_attention_mask(model.tokenizer, tokens_2, False))
    cached_mask = lib.tensor(np.concatenate([mask, mask_2], axis=1))
    out = np_(model.pos_embed(tokens_2, tokens.shape[1], attention_mask=cached_mask))
    target = np_(model.pos_embed.W_pos)[sum([list(range(len(a), len(a) + len(b)))
                                             for a, b in zip(str_tokens, str_tokens_2)], [])]
    keep = mask_2.astype(bool)
    assert np.allclose(out[keep], target, atol=1e-4)
    assert out[~keep].sum() == 0


def _identity(i, single, left, right, left_span, right_span):
    left, right = np_(left)[i, slice(*left_span)], np_(right)[i, slice(*right_span)]
    single = np_(single)[0]
    assert np.allclose(left, right, atol=1e-4)
    assert np.allclose(left, single, atol=1e-4) and np.allclose(right, single, atol=1e-4)


@pytest.mark.slow
def test_left_padding_by_comparing_outputs(model):
    n_tokens = np.array([len(t) for t in model.to_str_tokens(PROMPTS)])
    model.tokenizer.padding_side = "left"
    left_logits, left_cache = model.run_with_cache(PROMPTS)
    model.tokenizer.padding_side = "right"
    right_logits, right_cache = model.run_with_cache(PROMPTS)
    left_np, right_np = np_(left_logits), np_(right_logits)
    rows = np.arange(len(PROMPTS))
    left_first = left_np.shape[1] - n_tokens
    assert np.allclose(left_np[:, -1], right_np[rows, n_tokens - 1], atol=1e-4)
    assert np.allclose(left_np[rows, left_first], right_np[:, 0], atol=1e-4)
    for i, prompt in enumerate(PROMPTS):
        single_logits, single_cache = model.run_with_cache(prompt)
        spans = ((int(left_first[i]), left_np.shape[1]), (0, int(n_tokens[i])))
        assert single_logits.shape[1] == n_tokens[i]
        _identity(i, single_logits, left_logits, right_logits, *spans)
        # TL's names k6a, pre2, scale4ln1, pre5 address gpt2-small's 12 layers; these 3 layers'
        for name in ["k2a", "pre1", "embed", "k2", "scale1ln1", "pre2"]:
            _identity(i, single_cache[name], left_cache[name], right_cache[name], *spans)


# ------------------------------------------------------------------ test_attention_mask.py
@pytest.mark.slow
def test_attention_mask(lib):
    # Scores the causal mask excludes are -inf, and low scores it keeps stay attended.
    model = lib.HookedTransformer(lib.Config(d_head=1, d_model=12, d_vocab=2, n_ctx=5, n_layers=1,
                                             attn_only=True, attention_dir="causal"))
    masked = np.triu(np.ones((5, 5)), k=1).astype(bool)
    seen = {}

    def scores_hook(scores, hook):
        s = np_(scores)
        assert (s[:, :, masked] == -np.inf).all()
        s = s.copy()
        s[:, :, ~masked] = 1e-6
        seen["scores"] = True
        return lib.tensor(s)

    def pattern_hook(pattern, hook):
        assert (np_(pattern)[:, :, masked] == 0).all()
        seen["pattern"] = True
        return pattern

    model.run_with_hooks(lib.tensor(np.ones((1, 5), np.int64)), fwd_hooks=[
        (lib.utils.get_act_name("attn_scores", 0), scores_hook),
        (lib.utils.get_act_name("attn", 0), pattern_hook)])
    assert seen == {"scores": True, "pattern": True}


@pytest.mark.slow
def test_masked_tokens(lib):
    # TL uses solu-1l from the hub; a random model of its shape is used here.
    m = lib.HookedTransformer(lib.Config(**dict(CFG, n_layers=1, act_fn="solu_ln")))
    m.set_tokenizer(tokenizer())
    tokens = np_(m.to_tokens(["Hello world!", "The quick brown fox jumps over the lazy dog."]))
    full = np.ones_like(tokens)
    assert np.allclose(np_(m(lib.tensor(tokens))), np_(m(lib.tensor(tokens),
                                                          attention_mask=lib.tensor(full))))
    drop = 2
    edited = np.concatenate([tokens[:, :drop], tokens[:, drop + 1:]], axis=1)
    mask = full.copy()
    mask[:, drop] = 0
    expected = np_(m(lib.tensor(edited)))
    out = np_(m(lib.tensor(tokens), attention_mask=lib.tensor(mask)))
    out = np.concatenate([out[:, :drop], out[:, drop + 1:]], axis=1)
    assert np.allclose(expected, out, atol=1e-4)
