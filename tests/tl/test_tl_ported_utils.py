"""TransformerLens 3.x's tests/unit/test_utils.py, ported (see tests/tl_port.py): Slice,
is_square, is_lower_triangular, override_or_use_default_value and TestAttentionMask, on
TransformerLens 3.9 and on jtlens. Not ported: the kaiming/xavier init tests (torch.nn.init on
torch parameters; jtlens initialises with jax.random) and tokenize_and_concatenate's (they
download the gpt2 / t5-small tokenizers)."""

import copy

import numpy as np
import pytest

from tests.oracle import tokenizer
from tests.tl_port import CFG, lib, np_  # noqa: F401  (lib is the fixture)

REF = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
ROW0_DIM2, ROW0_DIM1 = REF[:1], REF[0]


# ------------------------------------------------------------------ TestSlice
@pytest.mark.parametrize("input_slice, expected", [
    ([0], ROW0_DIM2), ((1,), ROW0_DIM2), ("array[0]", ROW0_DIM2), ("np[0]", ROW0_DIM2),
    (0, ROW0_DIM1), ("array(0)", ROW0_DIM1), (None, REF)])
def test_slice_modularity(lib, input_slice, expected):
    # TL's parameters hold torch tensors; "array..." stands for the library's own tensor type.
    input_slice = {"array[0]": lib.tensor(np.array([0])), "np[0]": np.array([0]),
                   "array(0)": lib.tensor(np.array(0))}.get(input_slice, input_slice) \
        if isinstance(input_slice, str) else input_slice
    out = np_(lib.utils.Slice(input_slice=input_slice).apply(lib.tensor(REF)))
    assert out.shape == expected.shape and (out == expected).all()


@pytest.mark.parametrize("input_slice, expected", [([0, 1], np.array([0, 1])), (0, np.array(0)),
                                                   ("array(0)", np.array(0))])
def test_slice_indices(lib, input_slice, expected):
    if input_slice == "array(0)":
        input_slice = lib.tensor(np.array(0))
    assert (np_(lib.utils.Slice(input_slice=input_slice).indices(2)) == expected).all()


def test_slice_indices_error(lib):
    with pytest.raises(ValueError):
        _ = lib.utils.Slice(input_slice=[0, 2, 5]).indices()


# ------------------------------------------------------------------ is_square / lower triangular
FAILED_SQUARE = [np.array([]), np.array(2.0), np.ones((2, 3)), np.zeros(2), np.ones((3, 3, 3)),
                 np.ones((1, 1, 1, 1))]


@pytest.mark.parametrize("x", [np.ones((3, 3)), np.zeros((1, 1))])
def test_is_square_pass(lib, x):
    assert lib.utils.is_square(lib.tensor(x))


@pytest.mark.parametrize("x", FAILED_SQUARE)
def test_is_square_fail(lib, x):
    assert not lib.utils.is_square(lib.tensor(x))


@pytest.mark.parametrize("x", [np.eye(4), np.tril(np.ones((4, 4))), np.triu(np.ones((4, 4))).T,
                               np.zeros((4, 4))])
def test_lower_triangular_pass(lib, x):
    assert lib.utils.is_lower_triangular(lib.tensor(x))


@pytest.mark.parametrize("x", [*FAILED_SQUARE, np.triu(np.ones((4, 4))), np.tril(np.ones((4, 4))).T,
                               np.ones((3, 3))])
def test_lower_triangular_fail(lib, x):
    assert not lib.utils.is_lower_triangular(lib.tensor(x))


def test_override_or_use_default_value(lib):
    f = lib.utils.override_or_use_default_value
    for default in (True, False):
        for override in (True, False):
            assert f(default_flag=default, override=override) == override
        assert f(default_flag=default, override=None) == default
        assert f(default_flag=default) == default


# ------------------------------------------------------------------ TestAttentionMask
PROMPTS = ["Hello world!", "How are you today?", "I'm fine, thank you.", "I am happy."]
PROMPTS_WITH_SEP = ["I like cats<|endoftext|>Cats are so cute", "Hello world!",
                    "How are you<|endoftext|>I am fine, thanks"]


def _tokenizer(kind: str):
    """gpt2-small's kind (BOS == EOS == pad) or opt-125m's (a pad of its own)."""
    tok = copy.deepcopy(tokenizer())  # tokenizer() is shared: add the pad token to a copy
    if kind == "own-pad":
        tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


@pytest.fixture(params=["bos-is-pad", "own-pad"], ids=["gpt2-like", "opt-like"])
def model(lib, request):
    m = lib.HookedTransformer(lib.Config(**dict(CFG, d_vocab=302)))
    m.set_tokenizer(_tokenizer(request.param))
    return m


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("prompts_with_sep", [True, False])
def test_get_attention_mask(lib, model, padding_side, prepend_bos, prompts_with_sep):
    model.tokenizer.padding_side = padding_side
    model.tokenizer.sep_token_id = model.tokenizer.pad_token_id
    prompts = PROMPTS_WITH_SEP if prompts_with_sep else PROMPTS
    tokens = model.to_tokens(prompts, prepend_bos=prepend_bos)
    mask = np_(lib.utils.get_attention_mask(model.tokenizer, tokens, prepend_bos=prepend_bos))
    tokens = np_(tokens)
    assert mask.shape == tokens.shape
    n_attended = np.array([len(t) for t in model.to_str_tokens(prompts, prepend_bos=prepend_bos)])
    assert (n_attended == mask.sum(1)).all()
    assert (tokens[mask == 0] == model.tokenizer.pad_token_id).all()
    for i, num in enumerate(n_attended):
        assert (mask[i, :num] == 1).all() if padding_side == "right" else (mask[i, -num:] == 1).all()
    if not prompts_with_sep:
        attended_non_pad = (mask != (tokens != model.tokenizer.pad_token_id)).sum()
        bos_is_pad = model.tokenizer.bos_token == model.tokenizer.pad_token and prepend_bos
        assert attended_non_pad == (tokens.shape[0] if bos_is_pad else 0)
