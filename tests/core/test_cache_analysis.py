"""ActivationCache analyses (logit lens, decompositions, attributions) match TransformerLens 3.9."""

import numpy as np
import pytest

from tests.oracle import max_diff, tl_model, to_jtlens, tokens_for, torch

import jtlens
from jtlens.slice import Slice

GPT2 = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=60, n_ctx=16,
            act_fn="gelu_new", normalization_type="LN")
LLAMA = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48, d_vocab=60, n_ctx=16,
             act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
             rotary_dim=8, gated_mlp=True, n_key_value_heads=2, final_rms=True)


def _pair(cfg_dict, fold_ln):
    tl = tl_model(cfg_dict)
    if fold_ln:
        tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    cfg, params = to_jtlens(tl)
    ours = jtlens.HookedTransformer(cfg, params)
    tokens = tokens_for(cfg, batch=2, pos=7)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(np.array(tokens)))
    _, cache = ours.run_with_cache(tokens)
    return tl, tl_cache, ours, cache, tokens


@pytest.fixture(scope="module", params=[("gpt2", False), ("gpt2", True), ("llama", False)],
                ids=["gpt2", "gpt2-fold_ln", "llama-gqa-rms"])
def pair(request):
    name, fold = request.param
    return _pair(GPT2 if name == "gpt2" else LLAMA, fold)


def _same(theirs, ours):
    """Compare an analysis result (array, or (array, labels)) with TransformerLens's."""
    if isinstance(theirs, tuple):
        assert list(ours[1]) == list(theirs[1]), f"labels {ours[1][:6]} != {theirs[1][:6]}"
        theirs, ours = theirs[0], ours[0]
    theirs = theirs.detach().numpy()
    assert np.asarray(ours).shape == theirs.shape
    assert max_diff(ours, theirs) <= 1e-4


CALLS = [
    ("accumulated_resid", dict(return_labels=True)),
    ("accumulated_resid", dict(apply_ln=True, return_labels=True)),
    ("accumulated_resid", dict(layer=1, incl_mid=True, apply_ln=True, pos_slice=-1)),
    ("accumulated_resid", dict(layer=1, mlp_input=True, apply_ln=True, return_labels=True)),
    ("decompose_resid", dict(return_labels=True)),
    ("decompose_resid", dict(mode="attn", apply_ln=True, pos_slice=(0, 3), return_labels=True)),
    ("decompose_resid", dict(layer=1, mlp_input=True, apply_ln=True, incl_embeds=False)),
    ("stack_head_results", dict(return_labels=True)),
    ("stack_head_results", dict(layer=1, incl_remainder=True, pos_slice=-1, apply_ln=True,
                                return_labels=True)),
    ("stack_activation", dict(activation_name="z")),
    ("stack_activation", dict(activation_name="pattern", layer=1)),
    ("get_neuron_results", dict(layer=1, neuron_slice=(0, 5), pos_slice=-1)),
    ("stack_neuron_results", dict(layer=2, neuron_slice=(0, 4), incl_remainder=True,
                                  apply_ln=True, return_labels=True)),
    ("get_full_resid_decomposition", dict(return_labels=True)),
    ("get_full_resid_decomposition", dict(layer=1, mlp_input=True, expand_neurons=False,
                                          apply_ln=True, pos_slice=[1, 4], return_labels=True)),
]


@pytest.mark.slow
@pytest.mark.parametrize("method,kwargs", CALLS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CALLS)])
def test_analysis_matches_transformer_lens(pair, method, kwargs):
    _, tl_cache, _, cache, _ = pair
    _same(getattr(tl_cache, method)(**kwargs), getattr(cache, method)(**kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("vector", [False, True], ids=["basis", "direction"])
def test_projected_neuron_decompositions(pair, vector):
    tl, tl_cache, _, cache, _ = pair
    rng = np.random.default_rng(0)
    project = rng.normal(size=(tl.cfg.d_model,) if vector else (tl.cfg.d_model, 3)).astype(np.float32)
    tp = torch.as_tensor(project)
    _same(tl_cache.get_neuron_results(0, project_output_onto=tp),
          cache.get_neuron_results(0, project_output_onto=project))
    for kw in (dict(apply_ln=True, incl_remainder=True), dict(apply_ln=False)):
        _same(tl_cache.stack_neuron_results(2, project_output_onto=tp, return_labels=True, **kw),
              cache.stack_neuron_results(2, project_output_onto=project, return_labels=True, **kw))
    _same(tl_cache.get_full_resid_decomposition(apply_ln=True, project_output_onto=tp,
                                                return_labels=True),
          cache.get_full_resid_decomposition(apply_ln=True, project_output_onto=project,
                                             return_labels=True))


def test_logit_attrs(pair):
    tl, tl_cache, model, cache, tokens = pair
    t = np.asarray(tokens)
    wrong = (t + 1) % tl.cfg.d_vocab
    stack_tl, stack = tl_cache.decompose_resid(), cache.decompose_resid()
    _same(tl_cache.logit_attrs(stack_tl, torch.as_tensor(t), torch.as_tensor(wrong)),
          cache.logit_attrs(stack, t, wrong))
    _same(tl_cache.logit_attrs(stack_tl[:, :, -1], 5, 7, pos_slice=-1),
          cache.logit_attrs(stack[:, :, -1], 5, 7, pos_slice=-1))
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, t, wrong[:, :2])


def test_apply_ln_to_stack_batch_slice(pair):
    _, tl_cache, _, cache, _ = pair
    stack_tl, stack = tl_cache.decompose_resid(layer=1), cache.decompose_resid(layer=1)
    _same(tl_cache.apply_ln_to_stack(stack_tl, layer=1, batch_slice=1),
          cache.apply_ln_to_stack(stack, layer=1, batch_slice=1))


def test_model_helpers(pair):
    tl, _, model, _, tokens = pair
    t = np.asarray(tokens)
    _same(tl.tokens_to_residual_directions(torch.as_tensor(t)), model.tokens_to_residual_directions(t))
    _same(tl.tokens_to_residual_directions(3), model.tokens_to_residual_directions(3))
    for layer, mlp_input, mlp_biases in ((2, False, True), (1, True, False), (0, False, True)):
        _same(tl.accumulated_bias(layer, mlp_input, mlp_biases),
              model.accumulated_bias(layer, mlp_input, mlp_biases))


def test_compute_head_results_fills_hook_result(pair):
    _, tl_cache, _, cache, _ = pair
    tl_cache.compute_head_results()
    fresh = cache.apply_slice_to_batch_dim(slice(None))  # a new cache object over the same arrays
    assert "blocks.1.attn.hook_result" not in fresh
    fresh.compute_head_results()
    _same(tl_cache["result", 1], fresh["result", 1])


@pytest.mark.slow
def test_analysis_needs_a_model():
    cfg, params = to_jtlens(tl_model(GPT2))
    _, cache = jtlens.forward_with_cache(params, tokens_for(cfg), cfg, hooks=jtlens.Hooks(capture=True))
    assert cache.accumulated_resid().shape[0] == cfg.n_layers + 1  # no weights needed
    with pytest.raises(ValueError, match="with_model"):
        cache.stack_head_results()
    with pytest.raises(KeyError, match="hook_scale"):
        lean = jtlens.HookedTransformer(cfg, params).run_with_cache(
            tokens_for(cfg), names_filter="blocks.*.hook_resid_pre")[1]
        lean.apply_ln_to_stack(lean.accumulated_resid(layer=1), layer=1)


def test_slice_semantics():
    x = np.arange(24).reshape(2, 3, 4)
    assert Slice(None).apply(x, 1).shape == (2, 3, 4)
    assert Slice(-1).apply(x, 1).shape == (2, 4)
    assert Slice((0, 2)).apply(x, 1).shape == (2, 2, 4)
    assert (Slice([0, 2]).apply(x, -1) == x[..., [0, 2]]).all()
    assert Slice.unwrap(1).apply(x, 1).shape == (2, 1, 4)
    assert list(Slice((1, 5, 2)).indices(6)) == [1, 3]
    with pytest.raises(ValueError, match="cannot index"):
        Slice("last")


def test_analyses_run_inside_jit(pair):
    """A cache is a pytree carrying its model, so analyses compile and still equal TransformerLens's."""
    import jax
    _, tl_cache, _, cache, tokens = pair
    t = np.asarray(tokens)

    @jax.jit
    def analyse(c, toks):
        stack = c.get_full_resid_decomposition(apply_ln=True)
        return c.logit_attrs(stack, toks), c.accumulated_resid(apply_ln=True, pos_slice=-1)

    attrs, lens = analyse(cache, t)
    stack_tl = tl_cache.get_full_resid_decomposition(apply_ln=True)
    _same(tl_cache.logit_attrs(stack_tl, torch.as_tensor(t)), attrs)
    _same(tl_cache.accumulated_resid(apply_ln=True, pos_slice=-1), lens)
