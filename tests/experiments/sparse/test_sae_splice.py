"""SAEs spliced into a run, against SAELens's HookedSAETransformer on the same random weights:
logits with and without the error term, cache names and values, hooks on SAE points; and the
functional form under jit / vmap / grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from tests.oracle import CONFIGS, tl_model, to_jtlens, tokens_for  # noqa: E402

from jtlens import HookedSAETransformer, Hooks  # noqa: E402
from jtlens.sparse import SAE, Attached, SAEConfig, run_with_cache_with_saes, run_with_saes  # noqa: E402
from jtlens.sparse.sae import param_shapes  # noqa: E402

FAMILIES = ["gpt2", "llama"]
SITES = {  # hook -> (architecture, extra config)
    "blocks.0.hook_resid_pre": ("standard", {}),
    "blocks.1.hook_mlp_out": ("topk", {"k": 6}),
    "blocks.1.attn.hook_z": ("jumprelu", {"reshape_activations": "hook_z"}),
    "blocks.0.hook_resid_post": ("gated", {"normalize_activations": "layer_norm"}),
}


def _sae(hook: str, d_in: int, seed: int) -> SAE:
    arch, extra = SITES[hook]
    cfg = SAEConfig(d_in, 4 * d_in, arch, metadata={"hook_name": hook}, **extra)
    rng = np.random.default_rng(seed)
    params = {n: jnp.asarray(rng.standard_normal(s).astype(np.float32) * (0.15 if n.startswith("W") else 0.05))
              for n, s in param_shapes(cfg).items()}
    if "threshold" in params:
        params["threshold"] = jnp.abs(params["threshold"])
    return SAE(params, cfg)


@pytest.fixture(scope="module", params=FAMILIES)
def models(request, tmp_path_factory):
    tl = tl_model(CONFIGS[request.param], seed=3)
    theirs = sae_lens.HookedSAETransformer(tl.cfg)
    theirs.load_state_dict(tl.state_dict(), strict=False)
    theirs.eval()
    cfg, params = to_jtlens(tl)
    ours = HookedSAETransformer(cfg, params)
    folder = tmp_path_factory.mktemp("saes")
    saes = {}
    for i, hook in enumerate(SITES):
        d_in = cfg.n_heads * cfg.d_head if hook.endswith("hook_z") else cfg.d_model
        sae = _sae(hook, d_in, i)
        sae.save_model(folder / str(i))
        saes[hook] = (sae, sae_lens.SAE.load_from_disk(str(folder / str(i))))
    return ours, theirs, saes, tokens_for(cfg, batch=2, pos=9)


def _close(a, b, atol=1e-4):
    a, b = np.asarray(a), np.asarray(b.detach().numpy() if hasattr(b, "detach") else b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("hook", sorted(SITES))
@pytest.mark.parametrize("use_error_term", [False, True])
@pytest.mark.slow
def test_run_with_saes_logits(models, hook, use_error_term):
    ours, theirs, saes, toks = models
    sae, t_sae = saes[hook]
    with torch.no_grad():
        want = theirs.run_with_saes(torch.tensor(np.asarray(toks)), saes=[t_sae],
                                    use_error_term=use_error_term)
        clean = theirs(torch.tensor(np.asarray(toks)))
    got = ours.run_with_saes(toks, saes=[sae], use_error_term=use_error_term)
    _close(got, want)
    if not use_error_term:  # the splice changes the run
        assert float((want - clean).abs().max()) > 1e-2
    # the functional form, jitted, gives the same logits
    f = jax.jit(lambda s, t: run_with_saes(ours.params, t, ours.cfg, [Attached(s, use_error_term)]))
    _close(f(sae, toks), want)


def test_all_saes_at_once_and_cache(models):
    ours, theirs, saes, toks = models
    t_list = [t for _, t in saes.values()]
    with torch.no_grad():
        want_logits, want = theirs.run_with_cache_with_saes(torch.tensor(np.asarray(toks)),
                                                            saes=t_list, use_error_term=True)
    got_logits, got = ours.run_with_cache_with_saes(toks, saes=[s for s, _ in saes.values()],
                                                    use_error_term=True)
    _close(got_logits, want_logits)
    # SAELens's model adds blocks.L.mlp.hook_in (a transcoder input) that jtlens does not have
    want_keys = [k for k in want.keys() if not k.endswith("mlp.hook_in")]
    assert sorted(got.keys()) == sorted(want_keys)
    for k in want_keys:
        _close(got[k], want[k])
    assert "blocks.0.hook_resid_pre.hook_sae_acts_post" in got
    assert "blocks.0.hook_resid_pre" not in got.keys()
    # saes are detached afterwards, on both sides
    assert ours.acts_to_saes == {} and theirs.acts_to_saes == {}


def test_hooks_on_sae_points(models):
    """Ablate two features through a hook function on hook_sae_acts_post (SAELens tutorial idiom)."""
    ours, theirs, saes, toks = models
    hook = "blocks.1.hook_mlp_out"
    sae, t_sae = saes[hook]

    def ablate_t(acts, hook):
        acts[:, :, :3] = 0.0
        return acts

    def ablate_j(acts, hook):
        return acts.at[:, :, :3].set(0.0)

    name = f"{hook}.hook_sae_acts_post"
    with torch.no_grad():
        want = theirs.run_with_hooks_with_saes(torch.tensor(np.asarray(toks)), saes=[t_sae],
                                               fwd_hooks=[(name, ablate_t)])
    got = ours.run_with_hooks_with_saes(toks, saes=[sae], fwd_hooks=[(name, ablate_j)])
    _close(got, want)
    # the same edit as data: a patch on the SAE point, functional and jitted
    mask = jnp.zeros(4 * ours.cfg.d_model, bool).at[:3].set(True)
    f = jax.jit(lambda s: run_with_saes(ours.params, toks, ours.cfg, [s],
                                        hooks=Hooks(patch={name: (0.0, mask)})))
    _close(f(sae), want)


def test_add_sae_and_context(models):
    ours, theirs, saes, toks = models
    sae, t_sae = saes["blocks.0.hook_resid_pre"]
    ours.add_sae(sae)
    theirs.add_sae(t_sae)
    try:
        with torch.no_grad():
            want = theirs(torch.tensor(np.asarray(toks)))
        _close(ours(toks), want)
        assert list(ours.acts_to_saes) == ["blocks.0.hook_resid_pre"]
        sae2, t_sae2 = saes["blocks.1.hook_mlp_out"]
        with ours.saes([sae2]), theirs.saes([t_sae2]):
            with torch.no_grad():
                want2 = theirs(torch.tensor(np.asarray(toks)))
            _close(ours(toks), want2)
        _close(ours(toks), want)  # the context restored the one SAE
    finally:
        ours.reset_saes()
        theirs.reset_saes()
    with torch.no_grad():
        _close(ours(toks), theirs(torch.tensor(np.asarray(toks))))


@pytest.mark.slow
def test_vmap_and_grad_through_saes(models):
    ours, _, saes, toks = models
    sae, _ = saes["blocks.0.hook_resid_pre"]
    params, cfg = ours.params, ours.cfg
    # a stack of three SAEs (scaled decoders), one program
    stack = jax.tree_util.tree_map(lambda a: jnp.stack([a] * 3), sae)
    stack = SAE({**stack.params, "W_dec": jnp.stack([sae.W_dec * s for s in (1.0, 0.5, 2.0)])}, sae.cfg)
    many = jax.jit(jax.vmap(lambda s: run_with_saes(params, toks, cfg, [s])))(stack)
    for i, scale in enumerate([1.0, 0.5, 2.0]):
        one = SAE({**sae.params, "W_dec": sae.W_dec * scale}, sae.cfg)
        np.testing.assert_allclose(np.asarray(many[i]), np.asarray(run_with_saes(params, toks, cfg, [one])),
                                   atol=1e-4, rtol=0)
    # attribution patching over features: d(logit)/d(feature) by jax.grad of a zero delta on
    # hook_sae_acts_post, checked against a finite difference of a real edit
    name = "blocks.0.hook_resid_pre.hook_sae_acts_post"

    def metric(delta):
        logits = run_with_saes(params, toks, cfg, [Attached(sae, True)], hooks=Hooks(add={name: delta}))
        return logits[0, -1, 5] - logits[0, -1, 7]

    zero = jnp.zeros((2, 9, sae.cfg.d_sae))
    g = jax.grad(metric)(zero)
    f = int(jnp.argmax(jnp.abs(g[0, 4])))
    eps = 1e-2
    bump = zero.at[0, 4, f].set(eps)
    fd = (metric(bump) - metric(-bump)) / (2 * eps)
    assert abs(float(fd) - float(g[0, 4, f])) < 1e-2 * max(1.0, abs(float(fd)))
    # the cache of the functional form holds the SAE points under SAELens's names
    _, cache = run_with_cache_with_saes(params, toks, cfg, [Attached(sae, True)],
                                        hooks=Hooks(capture=[name, "blocks.0.hook_resid_pre.hook_sae_error"]))
    assert set(cache.keys()) == {name, "blocks.0.hook_resid_pre.hook_sae_error"}
    assert cache[name].shape == (2, 9, sae.cfg.d_sae)


def test_bad_attachments(models, one_line_error):
    ours, _, saes, toks = models
    sae, _ = saes["blocks.0.hook_resid_pre"]
    with pytest.raises(ValueError) as e:
        run_with_saes(ours.params, toks, ours.cfg, [sae], hooks=Hooks(add={"blocks.1.hook_resid_pre.hook_sae_acts_post": 0.0}))
    one_line_error(e, "no SAE is attached at 'blocks.1.hook_resid_pre'")
    with pytest.raises(ValueError) as e:
        run_with_saes(ours.params, toks, ours.cfg, [sae, sae])
    one_line_error(e, "two SAEs are attached")
    with pytest.raises(ValueError) as e:
        run_with_saes(ours.params, toks, ours.cfg, [SAE(sae.params, sae.cfg.replace(metadata={}))])
    one_line_error(e, "hook_name is empty")
