"""Feature sweeps, feature gradients, DLA and steering: the vmapped programs against SAELens's
HookedSAETransformer run feature by feature (and against exact decompositions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from tests.oracle import CONFIGS, tl_model, to_jtlens, tokens_for  # noqa: E402

from jtlens import HookedSAETransformer, Hooks, forward  # noqa: E402
from jtlens.sparse import SAE, Attached, SAEConfig, run_with_cache_with_saes, run_with_saes  # noqa: E402
from jtlens.sparse.features import (active_features, feature_ablation_sweep, feature_acts,  # noqa: E402
                                    feature_dla, feature_gradients, feature_patching_sweep,
                                    steering_hooks)
from jtlens.sparse.sae import param_shapes  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


def _sae(d_in, hook, seed=0, k=4):
    cfg = SAEConfig(d_in, 4 * d_in, "topk", k=k, metadata={"hook_name": hook})
    rng = np.random.default_rng(seed)
    return SAE({n: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.15)
                for n, s in param_shapes(cfg).items()}, cfg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tl = tl_model(CONFIGS["gpt2"], seed=5)
    theirs = sae_lens.HookedSAETransformer(tl.cfg)
    theirs.load_state_dict(tl.state_dict(), strict=False)
    cfg, params = to_jtlens(tl)
    sae = _sae(cfg.d_model, HOOK)
    folder = tmp_path_factory.mktemp("f")
    sae.save_model(folder / "s")
    t_sae = sae_lens.SAE.load_from_disk(str(folder / "s"))
    return theirs, cfg, params, sae, t_sae, tokens_for(cfg, 1, 7, seed=2), tokens_for(cfg, 1, 7, seed=3)


def metric(logits):
    return logits[0, -1, 11] - logits[0, -1, 13]


def _run_saelens(theirs, t_sae, toks, hook_fn):
    theirs.add_sae(t_sae, use_error_term=True)
    try:
        with torch.no_grad():
            logits = theirs.run_with_hooks(torch.tensor(np.asarray(toks)),
                                           fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", hook_fn)])
    finally:
        theirs.reset_saes()
    return float(metric(logits.numpy()))


@pytest.mark.slow
def test_ablation_sweep_matches_saelens_loop(setup):
    theirs, cfg, params, sae, t_sae, toks, _ = setup
    feats = active_features(feature_acts(params, toks, cfg, sae))
    assert 4 <= len(feats) < sae.cfg.d_sae
    got = feature_ablation_sweep(params, toks, cfg, sae, metric, batch_size=8)
    assert got.shape == (len(feats),)

    def ablate(f):
        def fn(acts, hook):
            acts[:, :, f] = 0.0
            return acts
        return fn

    want = [_run_saelens(theirs, t_sae, toks, ablate(int(f))) for f in feats]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    # by position: one feature at one position, against single jtlens runs
    by_pos = feature_ablation_sweep(params, toks, cfg, sae, metric, features=feats[:3], by_position=True)
    assert by_pos.shape == (3, toks.shape[1])
    name = f"{HOOK}.hook_sae_acts_post"
    for i, f in enumerate(feats[:3]):
        for p in (0, toks.shape[1] - 1):
            mask = jnp.zeros((1, toks.shape[1], sae.cfg.d_sae), bool).at[0, p, f].set(True)
            one = metric(run_with_saes(params, toks, cfg, [Attached(sae, True)],
                                       Hooks(patch={name: (0.0, mask)})))
            assert abs(float(one) - float(by_pos[i, p])) < 1e-4


def test_patching_sweep_matches_saelens_loop(setup):
    theirs, cfg, params, sae, t_sae, clean, corrupted = setup
    got = feature_patching_sweep(params, clean, corrupted, cfg, sae, metric)
    feats = np.union1d(active_features(feature_acts(params, clean, cfg, sae)),
                       active_features(feature_acts(params, corrupted, cfg, sae)))
    with torch.no_grad():
        _, c = theirs.run_with_cache_with_saes(torch.tensor(np.asarray(clean)), saes=[t_sae],
                                               use_error_term=True)
    clean_acts = c[f"{HOOK}.hook_sae_acts_post"]

    def patch(f):
        def fn(acts, hook):
            acts[:, :, f] = clean_acts[:, :, f]
            return acts
        return fn

    want = [_run_saelens(theirs, t_sae, corrupted, patch(int(f))) for f in feats]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_feature_gradients_match_torch_autograd(setup):
    theirs, cfg, params, sae, t_sae, toks, _ = setup
    grads, acts = feature_gradients(params, toks, cfg, sae, metric)
    store = {}

    def keep(a, hook):
        a.retain_grad()
        store["a"] = a
        return a

    theirs.add_sae(t_sae, use_error_term=True)
    try:
        logits = theirs.run_with_hooks(torch.tensor(np.asarray(toks)),
                                       fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", keep)])
        (logits[0, -1, 11] - logits[0, -1, 13]).backward()
    finally:
        theirs.reset_saes()
    np.testing.assert_allclose(np.asarray(acts), store["a"].detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(grads), store["a"].grad.numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_feature_dla_decomposes_the_logit_difference():
    """With an SAE on the last residual (error term on), the logit difference minus b_U is
    exactly the features' DLA + b_dec's + the error's, through ln_final (LNPre: centred)."""
    tl = tl_model(CONFIGS["stanford_scaled"], seed=6)
    cfg, params = to_jtlens(tl)
    hook = "blocks.1.hook_resid_post"
    sae = _sae(cfg.d_model, hook, seed=1, k=6)
    toks = tokens_for(cfg, 2, 6)
    d = jnp.zeros(cfg.d_vocab).at[11].set(1.0).at[13].set(-1.0)
    logits, cache = run_with_cache_with_saes(params, toks, cfg, [Attached(sae, True)],
                                             Hooks(capture=["ln_final.hook_scale",
                                                            f"{hook}.hook_sae_acts_post",
                                                            f"{hook}.hook_sae_error"]))
    scale = cache["ln_final.hook_scale"]
    dla = feature_dla(sae, cache[f"{hook}.hook_sae_acts_post"], params, cfg, scale, d)

    def through(v):
        v = v - v.mean(-1, keepdims=True)
        return (v @ params["unembed"]["W_U"] @ d) / scale[..., 0]

    total = dla.sum(-1) + through(sae.b_dec) + through(cache[f"{hook}.hook_sae_error"])
    want = logits @ d - params["unembed"]["b_U"] @ d
    np.testing.assert_allclose(np.asarray(total), np.asarray(want), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_steering(setup):
    _, cfg, params, sae, _, toks, _ = setup
    f, c = 7, 6.0
    steer = steering_hooks(sae, f, c)
    got = forward(params, toks, cfg, steer)
    # the same edit made on the feature itself, through the splice with its error term
    name = f"{HOOK}.hook_sae_acts_post"
    want = run_with_saes(params, toks, cfg, [Attached(sae, True)],
                         Hooks(add={name: c * jax.nn.one_hot(f, sae.cfg.d_sae)}))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=0)
    assert float(jnp.abs(got - forward(params, toks, cfg)).max()) > 1e-2
    model = HookedSAETransformer(cfg, params)
    out = model.generate(toks, max_new_tokens=2, do_sample=False, hooks=steer, verbose=False,
                         stop_at_eos=False)
    assert int(out[0, toks.shape[1]]) == int(jnp.argmax(got[0, -1]))
