"""Attribution patching and path patching against references built on TransformerLens 3.9."""

from functools import partial

import numpy as np
import pytest

import jtlens
import jtlens.patching as jp
from tests.oracle import max_diff, tl_model, tlp, to_jtlens, tokens_for, torch

SMALL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50)
LINEAR = [jp.get_act_patch_resid_pre, jp.get_act_patch_attn_out, jp.get_act_patch_attn_head_out_by_pos,
          jp.get_act_patch_attn_head_all_pos_every]


def logit_diff(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


def _pair(tl):
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    clean, corrupted = tokens_for(cfg, pos=5, seed=1), tokens_for(cfg, pos=5, seed=2)
    return model, clean, corrupted, torch.tensor(np.asarray(clean)), torch.tensor(np.asarray(corrupted))


@pytest.mark.slow
def test_attribution_is_exact_where_the_model_is_linear():
    """Attention-only, no norms, W_Q = W_K = 0 (uniform attention): the logit difference is linear
    in every residual, head output and value, so attribution equals TransformerLens's exact sweeps."""
    tl = tl_model(dict(SMALL, attn_only=True, normalization_type=None, d_mlp=None))
    with torch.no_grad():
        for block in tl.blocks:  # (tl.W_Q is a stacked copy)
            block.attn.W_Q.zero_()
            block.attn.W_K.zero_()
    model, clean, corrupted, clean_t, corrupted_t = _pair(tl)
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(clean_t)
        refs = [getattr(tlp, f.__name__)(tl, corrupted_t, tl_cache, logit_diff).numpy() for f in LINEAR]
    ours = jp.attribution_patch(model, corrupted, cache, logit_diff, LINEAR)
    for f, a, r in zip(LINEAR, ours, refs):
        assert max_diff(a, r) <= 1e-4, f.__name__
    assert max(np.ptp(r) for r in refs) > 1e-2


@pytest.mark.slow
def test_attribution_is_the_first_order_change_on_gpt2():
    """On a nonlinear model, attribution - baseline = d/d eps metric(corrupted + eps (clean - corrupted))
    at the patched slice, measured by central differences on TransformerLens in float64 (the
    baseline metric(corrupted) comes from TransformerLens too)."""
    tl = tl_model(dict(SMALL, act_fn="gelu_new", normalization_type="LN"))
    model, clean, corrupted, clean_t, corrupted_t = _pair(tl)
    _, cache = model.run_with_cache(clean)
    z_attr, resid_attr = jp.attribution_patch(
        model, corrupted, cache, logit_diff, [jp.get_act_patch_attn_head_out_all_pos, jp.get_act_patch_resid_pre])
    tl64 = tl.to(torch.float64)
    with torch.no_grad():
        _, clean64 = tl64.run_with_cache(clean_t)
        _, corr64 = tl64.run_with_cache(corrupted_t)
        base64 = float(logit_diff(tl64(corrupted_t)))

        def slope(name, where):
            def nudge(act, hook, eps):
                act = act.clone()
                act[where] += eps * (clean64[name][where] - corr64[name][where])
                return act
            eps = 1e-4
            up, down = (float(logit_diff(tl64.run_with_hooks(corrupted_t, fwd_hooks=[(name, partial(nudge, eps=e))])))
                        for e in (eps, -eps))
            return (up - down) / (2 * eps)

        for (layer, head) in [(0, 1), (1, 2)]:
            want = slope(f"blocks.{layer}.attn.hook_z", (slice(None), slice(None), head))
            assert abs(float(z_attr[layer, head]) - base64 - want) <= 1e-4
        for (layer, pos) in [(0, 4), (1, 2)]:
            want = slope(f"blocks.{layer}.hook_resid_pre", (slice(None), pos))
            assert abs(float(resid_attr[layer, pos]) - base64 - want) <= 1e-4


def _tl_path_patch(tl, corrupted_t, clean, corr, sender, receivers, freeze):
    """Two TransformerLens runs by hand: freeze everything but the sender, record the receivers;
    then patch only the receivers."""
    ls, hs = sender

    def hold(act, hook):
        act = corr[hook.name].clone()
        if hook.name == f"blocks.{ls}.attn.hook_z":
            act[:, :, hs] = clean[hook.name][:, :, hs]
        return act

    seen = {}

    def record(act, hook):
        seen[hook.name] = act.clone()

    frozen = [(lambda n, t=t: n.endswith("." + t), hold) for t in freeze]
    tl.run_with_hooks(corrupted_t, fwd_hooks=frozen + [(name, record) for name, _ in receivers])

    def put(act, hook, head):
        act = act.clone()
        if head is None:
            act[:] = seen[hook.name]
        else:
            act[:, :, head] = seen[hook.name][:, :, head]
        return act

    logits = tl.run_with_hooks(corrupted_t, fwd_hooks=[(name, partial(put, head=h)) for name, h in receivers])
    return float(logit_diff(logits))


@pytest.mark.parametrize("receivers,freeze", [
    ([("blocks.1.attn.hook_q", 0), ("blocks.1.attn.hook_v", 3)], ("attn.hook_z",)),
    ([("blocks.1.hook_resid_post", None)], ("attn.hook_z", "hook_mlp_out")),
])
@pytest.mark.slow
def test_path_patching_matches_a_two_run_reference(receivers, freeze):
    tl = tl_model(dict(SMALL, act_fn="gelu_new", normalization_type="LN"))
    model, clean, corrupted, clean_t, corrupted_t = _pair(tl)
    _, cache = model.run_with_cache(clean)
    ours = jp.path_patch(model, corrupted, cache, logit_diff,
                         [r if h is None else (r, h) for r, h in receivers], freeze=freeze, progress=False)
    assert ours.shape == (2, 4)
    with torch.no_grad():
        _, tl_clean = tl.run_with_cache(clean_t)
        _, tl_corr = tl.run_with_cache(corrupted_t)
        ref = np.array([[_tl_path_patch(tl, corrupted_t, tl_clean, tl_corr, (l, h), receivers, freeze)
                         for h in range(4)] for l in range(2)])
    assert max_diff(ours, ref) <= 1e-4
    assert np.ptp(ref) > 1e-3


@pytest.mark.slow
def test_path_patching_bad_receivers():
    tl = tl_model(dict(SMALL, act_fn="gelu_new", normalization_type="LN"))
    model, clean, corrupted, *_ = _pair(tl)
    _, cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match="needs a layer"):
        jp.path_patch(model, corrupted, cache, logit_diff, ["resid_pre"])
    with pytest.raises(ValueError, match="no head axis"):
        jp.path_patch(model, corrupted, cache, logit_diff, [("blocks.1.hook_resid_pre", 0)])
    with pytest.raises(ValueError, match="not a jtlens get_act_patch"):
        jp.attribution_patch(model, corrupted, cache, logit_diff, tlp.get_act_patch_resid_pre)
