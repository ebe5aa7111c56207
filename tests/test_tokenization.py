"""to_tokens / to_str_tokens / to_string / padding / BOS against TransformerLens 3.9's facade."""

import functools
import tempfile

import numpy as np
import pytest

import jtlens
from tests.oracle import tl_model, to_jtlens
from tests.test_parity_core import CONFIGS

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


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("text", ["The cat sat", ["The cat sat on the mat", "Hello"]])
def test_tokens_and_logits_match(side, text):
    tl, model = pair(side)
    np.testing.assert_array_equal(np.asarray(model.to_tokens(text)), tl.to_tokens(text).numpy())
    np.testing.assert_array_equal(np.asarray(model.to_tokens(text, prepend_bos=False)),
                                  tl.to_tokens(text, prepend_bos=False).numpy())
    np.testing.assert_allclose(np.asarray(model(text)), tl(text).detach().numpy(), atol=1e-4)
    assert abs(float(model(text, return_type="loss")) - tl(text, return_type="loss").item()) < 1e-5


def test_string_helpers_match():
    tl, model = pair("right")
    assert model.to_str_tokens("The cat sat") == tl.to_str_tokens("The cat sat")
    assert model.to_string(model.to_tokens("The cat")) == tl.to_string(tl.to_tokens("The cat"))
    assert model.to_single_token(" cat") == tl.to_single_token(" cat")
    assert model.get_token_position(" cat", "The cat sat") == tl.get_token_position(" cat", "The cat sat")
    assert model.to_single_str_token(model.to_single_token(" cat")) == " cat"


def test_bad_text_inputs():
    _, model = pair("right")
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token(" cat sat")
    with pytest.raises(ValueError, match="longer than the context"):
        model.to_tokens("The cat sat on the mat. " * 40, truncate=False)
    assert model.to_tokens("The cat sat on the mat. " * 40).shape[1] == model.cfg.n_ctx
    with pytest.raises(ValueError, match="no tokenizer"):
        jtlens.HookedTransformer(model.cfg, model.params).to_tokens("hi")
