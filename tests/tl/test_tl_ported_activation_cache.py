"""Part of TransformerLens 3.x's tests/acceptance/test_activation_cache.py, ported (see
tests/tl_port.py): the cache's container behaviour (remove_batch_dim, keys/values/items, key
forms, batch slices, stack_activation, compute_head_results). TL loads solu-2l and
attn-only-2l from the hub; random models of those kinds stand in. The numeric analysis tests
(logit_attrs, decompositions) are covered against TL 3.9 in tests/test_cache_analysis.py."""

import pytest

from tests.tl_port import lib, model as make_model, np_  # noqa: F401  (lib is the fixture)

PROMPTS = ["When John and Mary went to the shops, John gave the bag to",
           "When Tom and James went to the park, Tom gave the ball to"]


@pytest.fixture
def model(lib):
    return make_model(lib, act_fn="solu_ln", n_ctx=64)


@pytest.mark.slow
def test_remove_batch_dim(model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS)[:1])
    assert cache.has_batch_dim
    before = {k: tuple(v.shape) for k, v in cache.items()}
    for _ in range(2):  # removing it again changes nothing
        cache.remove_batch_dim()
        assert not cache.has_batch_dim
        assert all(before[k][1:] == tuple(v.shape) for k, v in cache.items())


def test_remove_batch_dim_fails_if_batch_gt_1(model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    with pytest.raises(AssertionError):
        cache.remove_batch_dim()


def test_retrieve_activations(lib, model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    n = model.cfg.n_layers
    pairs = [(("scale", 1, "ln1"), lib.utils.get_act_name("scale", 1, "ln1")),
             (("scale", -1, "ln1"), f"scale{n - 1}ln1"),
             (("k", -1, None), f"blocks.{n - 1}.attn.hook_k"),
             ("embed", lib.utils.get_act_name("embed")),
             (("embed", None), lib.utils.get_act_name("embed", None))]
    for key, name in pairs:
        assert (np_(cache[key]) == np_(cache[name])).all(), key


def test_items_values_keys(model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    keys = list(cache.keys())
    assert keys == [k for k, _ in cache.items()]
    assert all((np_(v) == np_(cache[k])).all() for k, v in zip(keys, cache.values()))


@pytest.mark.slow
def test_apply_slice_to_batch_dim(lib, model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS * 2))
    new = cache.apply_slice_to_batch_dim(lib.utils.Slice((1, 3)))
    assert new.has_batch_dim
    assert all((np_(cache[k])[1:3] == np_(new[k])).all() for k in cache.keys())
    new = cache.apply_slice_to_batch_dim(2)
    assert not new.has_batch_dim
    assert all((np_(cache[k])[2] == np_(new[k])).all() for k in cache.keys())


def test_stack_activation(model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    stack = np_(cache.stack_activation("scale", -1, "ln1"))
    assert all((np_(cache[("scale", l, "ln1")]) == stack[l]).all() for l in range(model.cfg.n_layers))
    stack = np_(cache.stack_activation("scale", 1, "ln1"))
    assert len(stack) == 1 and (np_(cache[("scale", 0, "ln1")]) == stack[0]).all()


def test_compute_head_results_does_not_compute_results_twice(lib, request):
    model = make_model(lib, attn_only=True, n_ctx=64)
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    assert "blocks.0.attn.hook_result" not in cache.keys()
    cache.compute_head_results()
    assert "blocks.0.attn.hook_result" in cache.keys()
    if lib.name == "jtlens":
        # TL writes inf into the cached tensor in place and checks a second call keeps it;
        # jtlens arrays are immutable, so it checks the second call keeps the same stacked array.
        held = cache.stacked["attn.hook_result"]
        cache.compute_head_results()
        assert cache.stacked["attn.hook_result"] is held
        return
    cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] = float("inf")
    cache.compute_head_results()
    assert cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] == float("inf")
