"""`model.cfg.x = value` (TransformerLens's idiom) on jtlens's frozen Config."""

import pickle

import pytest

import jtlens

CFG = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=20)


def test_assignment_swaps_in_a_replaced_config():
    model = jtlens.HookedTransformer(jtlens.Config(**CFG))
    before = model.cfg
    model.cfg.use_attn_result = True
    assert model.cfg.use_attn_result and not before.use_attn_result  # a new Config, not an edit
    assert "blocks.0.attn.hook_result" in model.run_with_cache([[1, 2]])[1]


def test_the_view_is_the_same_static_argument_as_the_plain_config():
    model = jtlens.HookedTransformer(jtlens.Config(**CFG))
    plain = jtlens.Config(**CFG)
    assert model.cfg == plain and plain == model.cfg and hash(model.cfg) == hash(plain)
    assert type(pickle.loads(pickle.dumps(model.cfg))) is jtlens.Config


def test_shape_changing_and_unknown_fields_are_refused():
    model = jtlens.HookedTransformer(jtlens.Config(**CFG))
    with pytest.raises(ValueError, match="changes the shapes of the model's weights"):
        model.cfg.d_model = 16
    with pytest.raises(AttributeError, match="Config has no field 'd_modle'"):
        model.cfg.d_modle = 16
    with pytest.raises(ValueError, match="n_heads=2 is not a multiple of n_key_value_heads=3"):
        model.cfg.n_key_value_heads = 3
    assert model.cfg.d_model == 8
