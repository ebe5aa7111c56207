"""The MoE MLP: equal to TransformerLens 3.9's MoE (output and hooks), both dispatch modes
agree, gather mode refuses an overflow, and an expert-ablation vmap equals a loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jtlens.core.config import Config
from jtlens.core.moe import capacity, moe_mlp

torch.set_num_threads(1)
E, K, D, M = 4, 2, 16, 8


class _Ctx:
    """A stand-in for the forward's hook context: records every hook it fires."""

    def __init__(self, cfg):
        self.cfg, self.seen = cfg, {}

    def __call__(self, name, act):
        self.seen[name] = act
        return act


def _run_tl(cls, std: float, seed: int):
    """A TransformerLens MoE layer (`cls`) with N(0, std) params: (layer, x [2, 8, D], its output,
    the hooks it fired: routing weights and indices, expert 0's gate)."""
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
    torch.manual_seed(seed)
    tl = cls(HookedTransformerConfig(n_layers=1, d_model=D, n_ctx=8, d_head=4, d_mlp=M,
                                     act_fn="silu", gated_mlp=True, num_experts=E,
                                     experts_per_token=K, normalization_type="RMS"))
    for q in tl.parameters():
        torch.nn.init.normal_(q, std=std)
    x = torch.randn(2, 8, D)
    seen = {}
    for name, point in (("hook_expert_weights", tl.hook_expert_weights),
                        ("hook_expert_indices", tl.hook_expert_indices),
                        ("gate", tl.experts[0].hook_gate)):
        point.add_hook(lambda t, hook, n=name: seen.__setitem__(n, t.detach().numpy()))
    y = tl(x).detach().numpy()
    return tl, jnp.asarray(x.numpy()), y, seen


def _params(tl, biases: bool) -> dict:
    """jtlens's stacked MoE params from a TransformerLens MoE layer (nn.Linear: [out, in])."""
    linear = lambda name, kind: np.stack([  # noqa: E731
        getattr(getattr(e, name), kind).detach().numpy() for e in tl.experts])
    p = {"W_router": tl.W_gate.weight.detach().numpy().T,
         "experts": {n: linear(n, "weight").transpose(0, 2, 1) for n in ("W_gate", "W_in", "W_out")}}
    if biases:
        p["b_router"] = tl.W_gate.bias.detach().numpy()
        p["experts"].update({b: linear(n, "bias") for n, b in (
            ("W_gate", "b_gate"), ("W_in", "b_in"), ("W_out", "b_out"))})
    return jax.tree.map(jnp.asarray, p)


@pytest.fixture(scope="module")
def case():
    from transformer_lens.components.mlps.moe import MoE
    tl, x, y, seen = _run_tl(MoE, std=0.5, seed=0)
    cfg = Config(n_layers=1, d_model=D, n_ctx=8, d_head=4, d_mlp=M, act_fn="silu",
                 gated_mlp=True, num_experts=E, experts_per_token=K)
    return cfg, _params(tl, biases=False), x, y, seen


@pytest.mark.parametrize("dispatch", ["dense", "gather"])
def test_moe_matches_transformer_lens(case, dispatch):
    cfg, p, x, y, seen = case
    ctx = _Ctx(dataclasses.replace(cfg, moe_dispatch=dispatch))
    out = moe_mlp(p, x, ctx)
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ctx.seen["mlp.hook_expert_weights"], seen["hook_expert_weights"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ctx.seen["mlp.hook_expert_indices"], seen["hook_expert_indices"])


def test_dispatch_modes_agree_and_gather_refuses_overflow(case):
    cfg, p, x, _, _ = case
    run = lambda c: jax.jit(lambda p, x: moe_mlp(p, x, _Ctx(c)))(p, x)  # noqa: E731
    # Capacity 12 of 16 tokens: each expert really gathers a subset, and none overflows here.
    gather = dataclasses.replace(cfg, moe_dispatch="gather", moe_capacity_factor=1.5)
    assert capacity(16, gather) == 12
    np.testing.assert_allclose(run(gather), run(cfg), rtol=1e-5, atol=1e-6)
    # Capacity of 1 token per expert cannot hold 16 tokens * 2 routes over 4 experts.
    tight = dataclasses.replace(cfg, moe_dispatch="gather", moe_capacity_factor=0.1)
    with pytest.raises(Exception, match="exceeded the expert capacity"):
        jax.block_until_ready(run(tight))


def test_expert_ablation_vmap_equals_loop(case):
    cfg, p, x, _, _ = case

    def ablated(e):
        q = dict(p, experts=dict(p["experts"], W_out=p["experts"]["W_out"].at[e].set(0.0)))
        return moe_mlp(q, x, _Ctx(cfg))

    swept = jax.vmap(ablated)(jnp.arange(E))
    for e in range(E):
        np.testing.assert_allclose(swept[e], ablated(e), rtol=1e-6, atol=1e-6)
    assert not np.allclose(swept[0], swept[1])  # ablating different experts changes the output


@pytest.mark.parametrize("dispatch", ["dense", "gather"])
def test_gpt_oss_moe_matches_transformer_lens(dispatch):
    """GPT-OSS's experts: router bias, softmax over the chosen logits, biased experts whose
    clamped SwiGLU clamps (weights large enough that gate and up pass +-7)."""
    from transformer_lens.components.mlps.gpt_oss_moe import GptOssMoE
    tl, x, y, seen = _run_tl(GptOssMoE, std=1.0, seed=1)
    assert np.abs(seen["gate"]).max() > 7  # the clamp is reached
    cfg = Config(n_layers=1, d_model=D, n_ctx=8, d_head=4, d_mlp=M, act_fn="silu", gated_mlp=True,
                 num_experts=E, experts_per_token=K, moe_biases=True, moe_softmax_after_topk=True,
                 swiglu_limit=7.0, swiglu_alpha=1.702, moe_dispatch=dispatch)
    ctx = _Ctx(cfg)
    out = moe_mlp(_params(tl, biases=True), x, ctx)
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ctx.seen["mlp.hook_expert_weights"], seen["hook_expert_weights"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ctx.seen["mlp.hook_expert_indices"], seen["hook_expert_indices"])


@pytest.mark.parametrize("kw, problem", [({"num_experts": 4}, "go together"),
                                         ({"num_experts": 2, "experts_per_token": 3}, "exceeds"),
                                         ({"moe_dispatch": "sparse"}, "moe_dispatch"),
                                         ({"swiglu_limit": 7.0}, "describe experts"),
                                         ({"use_yarn_rope": True}, "rotary"),
                                         ({"use_yarn_rope": True, "positional_embedding_type": "rotary",
                                           "use_NTK_by_parts_rope": True}, "set only one"),
                                         ({"use_yarn_rope": True, "positional_embedding_type": "rotary",
                                           "rotary_scaling_factor": 8.0}, "set only one")])
def test_bad_moe_config_is_named(kw, problem):
    with pytest.raises(ValueError, match=problem):
        Config(n_layers=1, d_model=D, n_ctx=8, d_head=4, **kw)

