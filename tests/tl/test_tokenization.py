"""to_tokens / to_str_tokens / to_string / padding / BOS against TransformerLens 3.9's facade."""


import numpy as np
import pytest

import jtlens
from tests.oracle import pair


@pytest.mark.slow
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
    # truncate=False returns the whole sequence, as TransformerLens; the model then rejects it.
    full = model.to_tokens("The cat sat on the mat. " * 40, truncate=False)
    assert full.shape[1] > model.cfg.n_ctx
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(full)
    assert model.to_tokens("The cat sat on the mat. " * 40).shape[1] == model.cfg.n_ctx
    with pytest.raises(ValueError, match="no tokenizer"):
        jtlens.HookedTransformer(model.cfg, model.params).to_tokens("hi")
