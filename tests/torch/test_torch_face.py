"""jtlens.torch against TransformerLens 3.9 on the same random weights: outputs are torch
tensors with TransformerLens's numbers (1e-4), inputs may be torch tensors, hooks get torch
tensors they may edit in place, patching takes torch metrics."""

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

from tests.oracle import tl_model, to_jtlens, tokenizer  # noqa: E402
from tests.tl_port import CFG  # noqa: E402

pytestmark = pytest.mark.slow  # TransformerLens 3.9 and jtlens models built and compiled

TEXT = "The cat sat on the mat."
CORRUPT = "The cat sat on the mat!"


@pytest.fixture(scope="module")
def models():
    import jtlens.torch

    torch.set_num_threads(1)
    tl = tl_model(CFG)
    tl.set_tokenizer(tokenizer())
    cfg, params = to_jtlens(tl)
    return tl, jtlens.torch.HookedTransformer(cfg, params, tokenizer())


def close(ours, theirs, atol=1e-4):
    assert isinstance(ours, torch.Tensor), type(ours)
    assert ours.shape == theirs.shape
    return torch.allclose(ours, theirs.to(ours.dtype), atol=atol, rtol=0)


def test_outputs_are_torch_with_transformer_lens_numbers(models):
    tl, ours = models
    tokens = tl.to_tokens(TEXT)
    assert torch.equal(ours.to_tokens(TEXT), tokens)
    assert close(ours(tokens), tl(tokens))                                  # torch input
    assert close(ours(TEXT, return_type="loss"), tl(TEXT, return_type="loss"))
    logits, cache = ours.run_with_cache(TEXT)
    tl_logits, tl_cache = tl.run_with_cache(TEXT)
    assert close(logits.softmax(dim=-1), tl_logits.softmax(dim=-1))
    assert set(cache.keys()) == set(tl_cache.keys())
    for name in tl_cache.keys():
        assert close(cache[name], tl_cache[name]), name
    assert close(cache["pattern", 1], tl_cache["pattern", 1])
    resid, labels = cache.accumulated_resid(layer=-1, pos_slice=-1, return_labels=True)
    assert labels == tl_cache.accumulated_resid(layer=-1, pos_slice=-1, return_labels=True)[1]
    assert close(resid, tl_cache.accumulated_resid(layer=-1, pos_slice=-1))


def test_weights_and_factored_matrices(models):
    import jtlens.torch

    tl, ours = models
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U", "b_U", "W_E", "W_pos"):
        assert close(getattr(ours, name), getattr(tl, name)), name
    assert close(ours.blocks[1].attn.W_V, tl.blocks[1].attn.W_V)
    assert close(ours.OV.AB, tl.OV.AB) and close(ours.QK[1, 2].AB, tl.QK[1, 2].AB)
    assert close(ours.OV[0, 1].eigenvalues.abs().sort().values,
                 tl.OV[0, 1].eigenvalues.abs().sort().values)
    fm = jtlens.torch.FactoredMatrix(ours.W_E[:5], ours.W_U[:, :7])  # built from torch tensors
    assert close(fm.AB, tl.W_E[:5] @ tl.W_U[:, :7])
    assert close(ours.all_composition_scores("Q"), tl.all_composition_scores("Q"))


def test_state_dict_is_transformer_lens_named_torch_views(models):
    tl, ours = models
    state, theirs = ours.state_dict(), dict(tl.named_parameters())  # (TL's state_dict adds
    assert set(state) == set(theirs)                                  # its attention-mask buffers)
    for name, value in theirs.items():
        assert close(state[name], value), name
    assert [n for n, _ in ours.named_parameters()] == list(state)
    assert all(isinstance(p, torch.Tensor) for p in ours.parameters())

    def groups(names):  # TransformerLens's module order: embeddings, blocks 0.., final norm, unembed
        return list(dict.fromkeys(".".join(n.split(".")[:2 if n.startswith("blocks.") else 1])
                                  for n in names))
    assert groups(state) == groups(theirs)
    # (so the last name a loop over named_parameters() leaves bound is TransformerLens's too)
    assert list(state)[-1] == list(theirs)[-1] == "unembed.b_U"


def test_iterators_the_jax_model_returns_come_back_as_torch():
    import jax.numpy as jnp

    from jtlens.torch.convert import to_torch

    items = list(to_torch(iter({"W": jnp.ones(2)}.items())))   # (named_parameters' kind)
    assert items[0][0] == "W" and isinstance(items[0][1], torch.Tensor)
    assert all(isinstance(v, torch.Tensor) for v in to_torch(iter([jnp.zeros(1), jnp.ones(3)])))


def test_state_dict_of_a_mixture_with_grouped_keys_equals_the_jax_models():
    import jax
    import numpy as np

    import jtlens
    import jtlens.torch

    cfg = jtlens.Config(n_layers=2, d_model=16, n_heads=4, n_key_value_heads=2, d_head=4,
                        d_mlp=8, d_vocab=20, n_ctx=8, act_fn="silu", gated_mlp=True,
                        num_experts=4, experts_per_token=2, moe_biases=True,
                        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4)
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    ours = jtlens.torch.HookedTransformer(cfg, params).state_dict()
    reference = jtlens.HookedTransformer(cfg, params).state_dict()
    assert list(ours) == list(reference) and "blocks.1.mlp.experts.3.W_gate.weight" in ours
    for name, value in reference.items():
        assert isinstance(ours[name], torch.Tensor), name
        np.testing.assert_array_equal(ours[name].numpy(), np.asarray(value), err_msg=name)


def test_hooks_get_torch_tensors_and_in_place_edits_are_read_back(models):
    tl, ours = models
    seen = {}

    def zero_head(v, hook):
        seen[hook.name] = type(v)
        v[:, :, 1, :] = 0.0  # TransformerLens's idiom: edit in place, return nothing

    def scale(v, hook):
        return v * 2

    hooks = [("blocks.0.attn.hook_v", zero_head), ("blocks.1.hook_resid_pre", scale)]
    assert close(ours.run_with_hooks(TEXT, fwd_hooks=hooks), tl.run_with_hooks(TEXT, fwd_hooks=hooks))
    assert seen == {"blocks.0.attn.hook_v": torch.Tensor}
    scores = torch.zeros(2, 4)

    def store(pattern, hook):  # writing outputs into a torch tensor
        scores[hook.layer()] = pattern.diagonal(dim1=-2, dim2=-1, offset=-1).mean((0, -1))

    ours.run_with_hooks(TEXT, return_type=None, fwd_hooks=[(lambda n: n.endswith("pattern"), store)])
    mine = scores.clone()
    tl.run_with_hooks(TEXT, return_type=None, fwd_hooks=[(lambda n: n.endswith("pattern"), store)])
    assert close(mine, scores)
    ours.blocks[0].attn.hook_z.add_hook(zero_head)  # hook points as attributes, torch too
    tl.blocks[0].attn.hook_z.add_hook(zero_head)
    try:
        assert close(ours(TEXT), tl(TEXT))
    finally:
        ours.reset_hooks(), tl.reset_hooks()


@pytest.mark.slow
def test_patching_with_a_torch_metric(models):
    from transformer_lens import patching as tl_patching

    import jtlens.torch

    tl, ours = models
    clean, corrupt = tl.to_tokens(TEXT), tl.to_tokens(CORRUPT)
    _, cache = ours.run_with_cache(clean)
    _, tl_cache = tl.run_with_cache(clean)

    answers = torch.tensor([[5, 7]])

    def traced(logits):  # plain tensor code: traced into the sweep
        return logits[0, -1].log_softmax(dim=-1)[5] - logits[:, -1].gather(-1, answers)[:, 1].mean()

    def eager(logits):  # topk has no jax.numpy rule: evaluated per patch
        return torch.topk(logits[0, -1], k=2).values.sum()

    sweep = jtlens.torch.patching.get_act_patch_attn_head_out_all_pos
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: traced
        result = sweep(ours, corrupt, cache, traced)
    assert close(result, tl_patching.get_act_patch_attn_head_out_all_pos(tl, corrupt, tl_cache, traced))
    with pytest.warns(UserWarning, match="evaluated eagerly.*topk"):
        result = sweep(ours, corrupt, cache, eager)
    assert close(result, tl_patching.get_act_patch_attn_head_out_all_pos(tl, corrupt, tl_cache, eager))


def test_import_jtlens_does_not_import_torch():
    code = "import sys, jtlens, jtlens.patching, jtlens.utils; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_hooks_in_generate_say_what_to_do_instead(models):
    _, ours = models
    ours.blocks[0].hook_resid_pre.add_hook(lambda act, hook: act * 1)
    try:
        with pytest.raises(TypeError, match="torch hooks run in model.*model.jax.generate"):
            ours.generate("The cat", max_new_tokens=2, verbose=False)
    finally:
        ours.reset_hooks()
