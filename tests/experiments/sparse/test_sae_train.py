"""SAE training: the losses and gradients of SAELens's training SAEs on the same weights, the
vmapped multi-SAE step equal to separate steps, and a run that learns planted features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from sae_lens.saes.sae import TrainStepInput  # noqa: E402

from jtlens.sparse.train import (Hyper, TrainConfig, init_state, losses, to_sae,  # noqa: E402
                                 to_saes, train_step)

D_IN, D_SAE, B = 16, 64, 32


def _theirs(arch, **kw):
    cls = {"standard": ("StandardTrainingSAE", "StandardTrainingSAEConfig"),
           "topk": ("TopKTrainingSAE", "TopKTrainingSAEConfig"),
           "batchtopk": ("BatchTopKTrainingSAE", "BatchTopKTrainingSAEConfig"),
           "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig")}[arch]
    cfg = getattr(sae_lens, cls[1])(d_in=D_IN, d_sae=D_SAE, **kw)
    return getattr(sae_lens, cls[0])(cfg)


CASES = {
    "standard": (dict(l1_coefficient=0.3), Hyper(l1_coefficient=0.3), {"l1": 0.3}, {}),
    "topk": (dict(k=5, rescale_acts_by_decoder_norm=False, aux_loss_coefficient=0.7),
             Hyper(k=5, aux_loss_coefficient=0.7), {}, dict(k_max=8)),
    "batchtopk": (dict(k=4, rescale_acts_by_decoder_norm=False), Hyper(k=4), {}, dict(k_max=8)),
    "topk_rescaled": (dict(k=5, rescale_acts_by_decoder_norm=True), Hyper(k=5), {},
                      dict(k_max=8, rescale_acts_by_decoder_norm=True)),
    "batchtopk_rescaled": (dict(k=4, rescale_acts_by_decoder_norm=True), Hyper(k=4), {},
                           dict(k_max=8, rescale_acts_by_decoder_norm=True)),
    "jumprelu": (dict(l0_coefficient=0.2, jumprelu_bandwidth=0.5), Hyper(l0_coefficient=0.2), {"l0": 0.2},
                 dict(jumprelu_bandwidth=0.5)),
}


def _random_weights(theirs, rng):
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.tensor(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.3))
        if hasattr(theirs, "threshold"):
            theirs.threshold.abs_()
    return {n: jnp.asarray(p.detach().numpy()) for n, p in theirs.named_parameters()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_losses_and_grads_match_saelens_training(case):
    arch = case.split("_")[0]
    kw, hyper, coeffs, tc_kw = CASES[case]
    theirs = _theirs(arch, **kw)
    rng = np.random.default_rng(0)
    params = _random_weights(theirs, rng)
    x = rng.standard_normal((B, D_IN)).astype(np.float32)
    dead = np.zeros(D_SAE, bool)
    dead[::3] = True
    out = theirs.training_forward_pass(TrainStepInput(
        sae_in=torch.tensor(x), coefficients=coeffs, n_training_steps=0, is_logging_step=False,
        dead_neuron_mask=torch.tensor(dead) if arch in ("topk", "batchtopk") else None))
    out.loss.backward()
    tc = TrainConfig(arch, D_IN, D_SAE, total_steps=10, **tc_kw)
    (loss, (acts, _, parts)), grads = jax.value_and_grad(losses, has_aux=True)(
        params, hyper, jnp.asarray(x), tc, jnp.asarray(dead) if arch in ("topk", "batchtopk") else None)
    assert set(parts) == set(out.losses)
    for k, v in out.losses.items():
        v = float(v.detach())
        assert abs(float(parts[k]) - v) < 1e-4 * max(1, abs(v)), (k, parts[k], v)
    np.testing.assert_allclose(np.asarray(acts), out.feature_acts.detach().numpy(), atol=1e-5, rtol=0)
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[n]), p.grad.numpy(), atol=1e-4, rtol=1e-4,
                                   err_msg=n)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_rescaled_sae_saves_as_saelens_does(arch):
    """rescale_acts_by_decoder_norm: the inference SAE has the decoder norms folded in exactly
    as SAELens's inference save, so it encodes as the training forward did."""
    theirs = _theirs(arch, k=4, rescale_acts_by_decoder_norm=True)
    params = _random_weights(theirs, np.random.default_rng(4))
    saved = {n: t.detach().clone() for n, t in theirs.state_dict().items()}
    theirs.process_state_dict_for_saving_inference(saved)
    tc = TrainConfig(arch, D_IN, D_SAE, total_steps=10, k_max=4, rescale_acts_by_decoder_norm=True)
    threshold = float(saved["threshold"][0]) if arch == "batchtopk" else None
    sae = to_sae(params, Hyper(k=4), tc, threshold)
    assert not sae.cfg.rescale_acts_by_decoder_norm
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(np.asarray(sae.params[n]), saved[n].numpy(), atol=1e-6, err_msg=n)
    if arch == "topk":
        x = jnp.asarray(np.random.default_rng(5).standard_normal((B, D_IN)).astype(np.float32))
        _, (acts, out, _) = losses(params, Hyper(k=4), x, tc)
        np.testing.assert_allclose(np.asarray(sae.encode(x)), np.asarray(acts), atol=1e-5)
        np.testing.assert_allclose(np.asarray(sae(x)), np.asarray(out), atol=1e-5)


def test_rescale_is_refused_outside_topk():
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm"):
        TrainConfig("standard", D_IN, D_SAE, total_steps=1, rescale_acts_by_decoder_norm=True)


@pytest.mark.slow
def test_vmapped_saes_equal_separate_runs():
    tc = TrainConfig("topk", D_IN, D_SAE, total_steps=20, k_max=8, lr_warm_up_steps=3,
                     dead_feature_window=2)
    hypers = [Hyper(lr=1e-3, k=3), Hyper(lr=3e-3, k=8)]
    stacked = Hyper.stack(hypers)
    key = jax.random.PRNGKey(0)
    state = init_state(tc, stacked, key)
    singles = [jax.tree_util.tree_map(lambda a: a[i], init_state(tc, stacked, key)) for i in range(2)]
    rng = np.random.default_rng(1)
    for _ in range(6):
        x = jnp.asarray(rng.standard_normal((B, D_IN)).astype(np.float32))
        state, m = train_step(state, stacked, x, tc)
        for i, h in enumerate(hypers):
            singles[i], mi = train_step(singles[i], jax.tree_util.tree_map(jnp.float32, h), x, tc)
            assert abs(float(m["loss"][i]) - float(mi["loss"])) < 1e-5
    for i in range(2):
        np.testing.assert_allclose(np.asarray(state.params["W_dec"][i]),
                                   np.asarray(singles[i].params["W_dec"]), atol=1e-6)
    assert [s.cfg.k for s in to_saes(state, stacked, tc)] == [3, 8]


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "batchtopk"])
@pytest.mark.slow
def test_training_recovers_planted_features(arch):
    """Activations built from 32 sparse ground-truth directions: training explains most of
    their variance, and the trained SAE's own encode/decode agree with the training forward."""
    rng = np.random.default_rng(2)
    truth = rng.standard_normal((32, D_IN)).astype(np.float32)
    truth /= np.linalg.norm(truth, axis=-1, keepdims=True)

    def batch(n=256):
        on = rng.random((n, 32)) < 0.06
        return jnp.asarray((on * rng.exponential(1.0, (n, 32))).astype(np.float32) @ truth)

    kw = {"standard": dict(), "topk": dict(k_max=4), "batchtopk": dict(k_max=4),
          "jumprelu": dict(jumprelu_init_threshold=0.001)}[arch]
    tc = TrainConfig(arch, D_IN, D_SAE, total_steps=600, lr_decay_steps=100, **kw)
    hyper = {"standard": Hyper(lr=3e-3, l1_coefficient=0.01), "topk": Hyper(lr=3e-3, k=4),
             "batchtopk": Hyper(lr=3e-3, k=3), "jumprelu": Hyper(lr=3e-3, l0_coefficient=1e-3)}[arch]
    hyper = jax.tree_util.tree_map(jnp.float32, hyper)
    state = init_state(tc, Hyper.stack([hyper]), jax.random.PRNGKey(3))
    stacked = Hyper.stack([hyper])
    for _ in range(tc.total_steps):
        state, m = train_step(state, stacked, batch(), tc)
    assert float(m["explained_variance"][0]) > 0.8, m
    sae = to_saes(state, stacked, tc)[0]
    x = batch()
    ev = 1 - ((sae(x) - x) ** 2).sum(-1).mean() / ((x - x.mean(0)) ** 2).sum(-1).mean()
    assert float(ev) > 0.7


def test_auxk_loss_of_a_dictionary_narrower_than_half_its_input():
    """AuxK asks for the top d_in/2 dead latents; with fewer latents than that (4 < 16/2) all of
    them take part, scaled by n_dead / (d_in/2), as SAELens's min(k_aux, num_dead) does."""
    from jtlens.sparse.train import auxk_loss

    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((4, D_IN)).astype(np.float32)
    pre = rng.standard_normal((B, 4)).astype(np.float32)
    residual = rng.standard_normal((B, D_IN)).astype(np.float32)
    dead = np.array([True, True, False, True])
    ours = auxk_loss({"W_dec": jnp.asarray(W_dec)}, jnp.asarray(pre), jnp.asarray(residual),
                     jnp.asarray(dead))
    recon = (pre * dead) @ W_dec
    expected = 3 / (D_IN // 2) * ((recon - residual) ** 2).sum(-1).mean()
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)
