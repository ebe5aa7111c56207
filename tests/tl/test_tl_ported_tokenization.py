"""TransformerLens 3.x's tests/integration/test_tokenization_methods.py, ported (see
tests/tl_port.py). TL uses solu-1l and the gpt2 tokenizer from the hub and writes their token
ids down; here both libraries use the offline tokenizer, and ids are read from it."""

import numpy as np
import pytest

from tests.oracle import tokenizer
from tests.tl_port import CFG, lib, np_  # noqa: F401  (lib is the fixture)

TEXT = "Hello, world!"


@pytest.fixture
def model(lib):
    m = lib.HookedTransformer(lib.Config(**dict(CFG, n_ctx=64)))
    m.set_tokenizer(tokenizer())
    return m


def ids(text):
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_set_tokenizer_lazy(lib):
    model = lib.HookedTransformer(lib.Config(n_layers=1, d_model=10, n_ctx=1024, d_head=1,
                                             act_fn="relu", d_vocab=300))
    assert model.tokenizer is None
    model.set_tokenizer(tokenizer())
    assert model.tokenizer is not None
    word = " the"
    assert model.to_single_token(word) == ids(word)[0]
    assert model.to_string([ids(word)[0]]) == word


def test_d_vocab_from_tokenizer(lib):
    # TL's test_set_tokenizer_during_initialization: d_vocab comes from the tokenizer.
    cfg = lib.Config(**{k: v for k, v in CFG.items() if k != "d_vocab"})
    model = lib.HookedTransformer(cfg, tokenizer=tokenizer())
    assert model.cfg.d_vocab == max(tokenizer().get_vocab().values()) + 1


def test_to_tokens_default(model):
    assert np_(model.to_tokens(TEXT)).tolist() == [[tokenizer().bos_token_id] + ids(TEXT)]


def test_to_tokens_without_bos(model):
    assert np_(model.to_tokens(TEXT, prepend_bos=False)).tolist() == [ids(TEXT)]


def test_default_prepend_bos_through_cfg(model):
    # TL's most common idiom: model.cfg.default_prepend_bos = False
    model.cfg.default_prepend_bos = False
    assert np_(model.to_tokens(TEXT)).tolist() == [ids(TEXT)]


def test_to_tokens_device(model):
    assert (np_(model.to_tokens(TEXT, move_to_device=False)) == np_(model.to_tokens(TEXT))).all()


def test_to_tokens_truncate(model):
    s = "@ " * 65
    assert len(model.to_tokens(s)[0]) == 64
    assert len(model.to_tokens(s, truncate=False)[0]) == 1 + len(ids(s))


def test_to_string_from_to_tokens_without_bos(model):
    tokens = model.to_tokens(TEXT, prepend_bos=False)
    assert model.to_string(tokens[0]) == TEXT


def test_to_string_multiple(lib, model):
    rows = [[tokenizer().bos_token_id, ids(" the")[0]], ids(" the cat sat")[:2]]
    expected = [tokenizer().decode(r) for r in rows]
    assert model.to_string(lib.tensor(np.array(rows))) == expected


def test_to_str_tokens(model):
    word = " mat sat"
    pieces = [tokenizer().decode([i]) for i in ids(word)]
    assert model.to_str_tokens(word) == [tokenizer().bos_token] + pieces
    assert model.to_str_tokens(word, prepend_bos=False) == pieces


def test_to_single_token_and_str_token(model):
    word = " the"
    assert model.to_single_token(word) == ids(word)[0]
    assert model.to_single_str_token(ids(word)[0]) == word


def test_get_token_position_not_found(model):
    with pytest.raises(AssertionError) as e:
        model.get_token_position(" the", "A cat sat on a mat")
    assert str(e.value) == "The token does not occur in the prompt"


def test_get_token_position_str(model):
    text = "The cat sat on the mat"
    position = ids(text).index(ids(" cat")[0])
    assert model.get_token_position(" cat", text) == position + 1
    assert model.get_token_position(" cat", text, prepend_bos=False) == position


def test_get_token_position_int(lib, model):
    assert model.get_token_position(2, lib.tensor(np.array([2.0, 3, 4]))) == 0
    assert model.get_token_position(2, lib.tensor(np.array([2.0, 3, 4])), prepend_bos=False) == 0
    assert model.get_token_position(2, lib.tensor(np.array([2.0, 3, 4, 2, 5])), mode="last") == 3
    assert model.get_token_position(2, lib.tensor(np.array([[2.0, 3, 4]]))) == 0


def test_tokens_to_residual_directions(model):
    res_dir = model.tokens_to_residual_directions(model.to_tokens(""))
    assert tuple(res_dir.shape) == (CFG["d_model"],)
