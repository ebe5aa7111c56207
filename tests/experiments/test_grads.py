"""Gradients w.r.t. activations equal TransformerLens's retain_grad / backward hooks, for the
decoder families and T5 (HookedEncoderDecoder: the metric reads the decoder's logits, gradients
reach the encoder through cross-attention)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, t5_hf, tl_model, tl_t5, to_jtlens, tokens_for, torch

import jtlens
from jtlens import grads, steering
from jtlens.probes import train_linear_probe

TARGET = 7


DECODERS = ["gpt2", "llama"]
FAMILIES = DECODERS + ["t5"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    """TransformerLens's model and ours on one set of weights: `ours` / `theirs` are the extra
    arguments each takes (T5's decoder input), `at` turns a decoder hook name into the model's."""
    if request.param != "t5":
        tl = tl_model(CONFIGS[request.param])
        cfg, params = to_jtlens(tl)
        return types.SimpleNamespace(tl=tl, model=jtlens.HookedTransformer(cfg, params),
                                     tokens=tokens_for(cfg, batch=2, pos=8), ours={}, theirs={},
                                     run={}, at=lambda name: name)
    import tempfile

    hf = t5_hf("v1_0")
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        model = jtlens.HookedEncoderDecoder.from_pretrained(folder)
    rng = np.random.default_rng(1)
    tokens, decoder = rng.integers(2, model.cfg.d_vocab, (2, 7)), rng.integers(2, model.cfg.d_vocab, (2, 5))
    return types.SimpleNamespace(
        tl=tl_t5(hf, model.cfg.scale_decoder_outputs), model=model, tokens=tokens,
        ours=dict(decoder_tokens=decoder), theirs=dict(decoder_input=torch.tensor(decoder)),
        run=dict(decoder_input=decoder), at=lambda name: name.replace("blocks.", "decoder."))


def prob_of_target(logits):
    return jax.nn.softmax(logits[:, -1], -1)[:, TARGET].sum()


def _tl_grads(pair, names, metric):
    """TransformerLens: retain_grad on each activation, one backward."""
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept[hook.name] = act
        return act

    logits = pair.tl.run_with_hooks(torch.tensor(np.array(pair.tokens)), **pair.theirs,
                                    fwd_hooks=[(n, keep) for n in names])
    metric(logits, kept).backward()
    return {n: kept[n].grad.numpy() for n in names}


@pytest.mark.slow
def test_seed_gradient_of_a_probability(pair):
    name = pair.at("blocks.1.hook_mlp_out")
    ref = _tl_grads(pair, [name], lambda logits, _: logits[:, -1].softmax(-1)[:, TARGET].sum())[name]
    ours = grads.grad_wrt(pair.model, pair.tokens, prob_of_target, [name], **pair.ours)[name]
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.slow
def test_seed_gradient_of_a_cached_activation(pair):
    late = pair.at("blocks.1.hook_resid_post")  # (T5: the decoder's, seeded back to the encoder's embed)
    ref = _tl_grads(pair, ["hook_embed", late], lambda _, kept: kept[late].sum())["hook_embed"]
    ours = grads.grad_wrt(pair.model, pair.tokens, lambda c: c[late].sum(), ["hook_embed"],
                          metric_on="cache", **pair.ours)["hook_embed"]
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.slow
def test_grad_cache_equals_transformer_lens_backward_hooks(pair):
    tl, model = pair.tl, pair.model
    ref = {}
    tl.reset_hooks()
    def collect(g, hook):  # a hook applied on several paths (ln1 feeds q, k, v) fires per path
        ref[hook.name] = ref.get(hook.name, 0) + g.detach().numpy()

    for name in model.hook_names():  # the default hooks (TL refuses optional ones here)
        tl.add_hook(name, collect, dir="bwd")
    tl(torch.tensor(np.array(pair.tokens)), **pair.theirs)[:, -1].softmax(-1)[:, TARGET].sum().backward()
    tl.reset_hooks()
    value, gcache = jax.jit(grads.grad_cache, static_argnames=("cfg", "metric"))(
        model.params, cfg=model.cfg, tokens=pair.tokens, metric=prob_of_target, **pair.ours)
    assert ref and set(ref) <= set(gcache.keys())
    for name, g in ref.items():
        assert max_diff(gcache[name], g) <= 1e-5 * max(1.0, np.abs(g).max()), name


@pytest.mark.slow
def test_grad_cache_matches_finite_differences():
    cfg = jtlens.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20,
                        n_ctx=8, act_fn="gelu_new", normalization_type="LN")
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.arange(6)[None] % 20
    metric = lambda logits: jax.nn.log_softmax(logits[0, -1])[3]  # noqa: E731
    _, gcache = grads.grad_cache(params, cfg, tokens, metric)
    rng = np.random.default_rng(0)
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid",
                 "blocks.1.mlp.hook_pre", "ln_final.hook_normalized"):
        g = np.asarray(gcache[name], np.float64)
        v = rng.normal(size=g.shape).astype(np.float32)
        eps = 1e-2

        def f(sign):
            out = jtlens.forward(params, tokens, cfg, jtlens.Hooks(add={name: sign * eps * v}))
            return float(metric(out))
        fd = (f(1) - f(-1)) / (2 * eps)
        assert abs(fd - float((g * v).sum())) <= 2e-2 * max(1.0, abs(fd)), name


@pytest.mark.slow
def test_grad_times_activation_is_first_order_attribution(pair):
    name = pair.at("blocks.0.attn.hook_z")
    ref_grad = _tl_grads(pair, [name],
                         lambda logits, _: logits[:, -1].softmax(-1)[:, TARGET].sum())[name]
    with torch.no_grad():
        _, tl_cache = pair.tl.run_with_cache(torch.tensor(np.array(pair.tokens)), **pair.theirs)
    ours = grads.grad_times_activation(pair.model.params, pair.model.cfg, pair.tokens,
                                       prob_of_target, [name], **pair.ours)
    assert ours[name].shape == ref_grad.shape[:-1]
    assert max_diff(ours[name], (ref_grad * tl_cache[name].numpy()).sum(-1)) <= 1e-5


@pytest.mark.slow
def test_integrated_gradients_add_up_to_the_change(pair):
    model, tokens = pair.model, pair.tokens
    name = pair.at("blocks.1.hook_resid_pre")
    # Baseline: the same activation on other prompts (a zero baseline would cross LayerNorm's
    # discontinuity at 0, where completeness fails for any step count).
    target = model.run_with_cache(tokens, **pair.run)[1][name]
    baseline = model.run_with_cache((tokens + 1) % model.cfg.d_vocab, **pair.run)[1][name]
    ig = grads.integrated_gradients(model.params, model.cfg, tokens, prob_of_target, name,
                                    baseline, target, steps=64, **pair.ours)

    def tl_metric(value):  # the metric with the activation replaced, computed by TransformerLens
        fix = lambda act, hook: torch.tensor(np.array(value))  # noqa: E731
        with torch.no_grad():
            logits = pair.tl.run_with_hooks(torch.tensor(np.array(tokens)), **pair.theirs,
                                            fwd_hooks=[(name, fix)])
        return logits[:, -1].softmax(-1)[:, TARGET].sum().item()

    change = tl_metric(target) - tl_metric(baseline)
    assert abs(float(ig.sum()) - change) <= 0.02 * abs(change) + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("pair", DECODERS, indirect=True)  # (steering: decoders only)
def test_steering_vector_raises_the_target(pair):
    tl, model, tokens = pair.tl, pair.model, pair.tokens
    name = "blocks.1.hook_resid_pre"
    vector, history = steering.steering_vector(model.params, model.cfg, tokens, name, TARGET,
                                            steps=60, learning_rate=0.1)
    assert history[-1] > history[0] + 2.0  # nats gained at the last position
    add = lambda act, hook: act + torch.tensor(np.array(vector))  # noqa: E731
    with torch.no_grad():
        logits = tl.run_with_hooks(torch.tensor(np.array(tokens)), fwd_hooks=[(name, add)])
    steered = logits[:, -1].log_softmax(-1)[:, TARGET].mean().item()
    assert steered > float(history[0]) + 2.0


@pytest.mark.slow
def test_probe_finds_a_planted_feature():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    direction = rng.normal(size=32)
    # Separable: the label shifts activations by +-|direction| ~ 5.7 along one direction, noise sd 1.
    acts = rng.normal(size=(400, 32)) + np.outer(2 * labels - 1, direction)
    probe, accuracy = train_linear_probe(acts[:300], labels[:300], steps=200)
    held_out = (np.argmax(acts[300:] @ np.asarray(probe["W"]) + np.asarray(probe["b"]), -1)
                == labels[300:]).mean()
    assert accuracy > 0.95 and held_out > 0.95


@pytest.mark.slow
def test_param_gradients_and_jacobians_under_jit():
    cfg = jtlens.Config(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11,
                        n_ctx=4, act_fn="relu", normalization_type="LN")
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.array([[1, 2, 3]])
    loss = jax.jit(lambda p: jtlens.forward(p, tokens, cfg, return_type="loss"))
    g = jax.jit(jax.grad(lambda p: jtlens.forward(p, tokens, cfg, return_type="loss")))(params)
    W = params["blocks"]["mlp"]["W_out"]
    e = jnp.zeros_like(W).at[0, 3, 2].set(1e-2)
    fd = (loss(dict(params, blocks=dict(params["blocks"], mlp=dict(params["blocks"]["mlp"], W_out=W + e))))
          - loss(dict(params, blocks=dict(params["blocks"], mlp=dict(params["blocks"]["mlp"], W_out=W - e))))) / 2e-2
    assert abs(float(fd) - float(g["blocks"]["mlp"]["W_out"][0, 3, 2])) <= 1e-2 * max(1, abs(float(fd)))
    jac = jax.jit(jax.jacrev(lambda x: jtlens.forward(params, tokens, cfg, jtlens.Hooks(add={"hook_embed": x}))[0, -1]))(
        jnp.zeros((1, 3, 8)))
    assert jac.shape == (11, 1, 3, 8) and bool(jnp.isfinite(jac).all())


def test_bad_requests_are_clear_errors(pair):
    model, tokens = pair.model, pair.tokens
    with pytest.raises(ValueError, match="metric_on must be"):
        grads.grad_wrt(model, tokens, prob_of_target, ["hook_embed"], metric_on="probs", **pair.ours)
    with pytest.raises(ValueError, match="one concrete hook"):
        grads.integrated_gradients(model.params, model.cfg, tokens, prob_of_target,
                                   pair.at("blocks.*.hook_resid_pre"), 0.0, 1.0, **pair.ours)
    with pytest.raises(ValueError, match="hook_mlp_outt"):
        grads.grad_wrt(model, tokens, prob_of_target, [pair.at("blocks.0.hook_mlp_outt")], **pair.ours)
    if model.cfg.cross_attention:
        with pytest.raises(ValueError, match="needs decoder_tokens"):
            grads.grad_cache(model.params, model.cfg, tokens, prob_of_target)
