"""The public forward pieces carry jaxtyping shape annotations, and they hold when checked."""

import jax
import jax.numpy as jnp
import pytest
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

import jtlens
from jtlens import model as M

CFG = jtlens.Config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
                    act_fn="gelu_new", normalization_type="LN")


def checked(fn):
    return jaxtyped(typechecker=beartype)(fn)


@pytest.mark.slow
def test_forward_and_pieces_satisfy_their_annotations():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    tokens = jnp.arange(6)[None] % CFG.d_vocab
    logits = checked(jtlens.forward)(params, tokens, CFG)
    _, cache = checked(jtlens.forward_with_cache)(params, tokens, CFG)
    ctx = M.context(CFG, None, 1, 6)
    layer0 = jax.tree_util.tree_map(lambda a: a[0], params["blocks"])
    resid = checked(M.embed)(params, tokens, ctx)
    resid = checked(M.block)(layer0, resid, ctx.at(0, False, {}))
    out = checked(M.mlp)(layer0["mlp"], resid, ctx.at(0, False, {}))
    assert out.shape == resid.shape
    assert checked(M.unembed)(params, cache["blocks.1.hook_resid_post"], ctx).shape == logits.shape
    # under jit the annotations see tracers and hold too
    jax.jit(checked(jtlens.forward), static_argnames="cfg")(params, tokens, cfg=CFG)


@pytest.mark.slow
def test_annotations_reject_wrong_shapes():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    ctx = M.context(CFG, None, 1, 6)
    layer0 = jax.tree_util.tree_map(lambda a: a[0], params["blocks"])
    with pytest.raises(TypeCheckError):
        checked(jtlens.forward)(params, jnp.arange(6), CFG)            # [pos], not [batch, pos]
    with pytest.raises(TypeCheckError):
        checked(M.mlp)(layer0["mlp"], jnp.zeros((6, CFG.d_model)), ctx)  # no batch axis
    with pytest.raises(TypeCheckError):
        checked(M.embed)(params, jnp.zeros((1, 6)), ctx)                 # float ids
