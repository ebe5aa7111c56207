"""Shared harness of the ported TransformerLens 3.x unit tests (tests/test_tl_ported_*.py).

Each ported test is written once against TransformerLens's API and runs twice through the `lib`
fixture, on TransformerLens 3.9 and on jtlens, with only the library swapped. Inputs are made
with numpy and handed over with `lib.tensor` (torch.as_tensor / numpy), outputs are compared
through `np_`, so one body reads torch tensors and JAX arrays. A test that cannot pass on jtlens
is marked with `jtlens_xfail(request, reason)` (strict), and the README's "Coming from
TransformerLens" table lists the reason.
"""

import types

import numpy as np
import pytest

from tests.oracle import tokenizer, torch

CFG = dict(n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=300, act_fn="gelu_new",
           normalization_type="LN")


def _jtlens():
    import jtlens
    from jtlens import head_detector, utils

    return types.SimpleNamespace(name="jtlens", HookedTransformer=jtlens.HookedTransformer,
                                 Config=jtlens.HookedTransformerConfig,
                                 FactoredMatrix=jtlens.FactoredMatrix, utils=utils,
                                 head_detector=head_detector, tensor=np.asarray)


def _transformer_lens():
    import transformer_lens
    from transformer_lens import head_detector, utils

    return types.SimpleNamespace(name="transformer_lens",
                                 HookedTransformer=transformer_lens.HookedTransformer,
                                 Config=transformer_lens.HookedTransformerConfig,
                                 FactoredMatrix=transformer_lens.FactoredMatrix, utils=utils,
                                 head_detector=head_detector, tensor=torch.as_tensor)


@pytest.fixture(params=["transformer_lens", "jtlens"])
def lib(request):
    return _jtlens() if request.param == "jtlens" else _transformer_lens()


def model(lib, **changes):
    """A small random HookedTransformer of `lib` (hub models are unreachable offline)."""
    m = lib.HookedTransformer(lib.Config(**dict(CFG, **changes)))
    m.set_tokenizer(tokenizer())
    return m


def np_(x) -> np.ndarray:
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x)


def close(a, b, atol=1e-5, rtol=1.3e-6) -> bool:
    """torch.testing.assert_close's float32 tolerances, on numpy copies."""
    a, b = np_(a), np_(b)
    return a.shape == b.shape and np.allclose(a, b, atol=atol, rtol=rtol)


def jtlens_xfail(request, reason):
    if request.node.callspec.params["lib"] == "jtlens":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
