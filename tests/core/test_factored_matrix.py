"""FactoredMatrix, model.OV / model.QK and composition scores against TransformerLens 3.9."""

import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, torch

import jtlens
from jtlens.factored_matrix import FactoredMatrix, composition_scores


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    tl = tl_model(CONFIGS[request.param])
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params)


def np_(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def test_circuits_match(pair):
    tl, model = pair
    for name in ("OV", "QK"):
        ours, theirs = getattr(model, name), getattr(tl, name)
        assert ours.shape == tuple(theirs.shape)
        assert max_diff(ours.AB, np_(theirs.AB)) <= 1e-4
        assert max_diff(ours.S, np_(theirs.S)) <= 1e-4          # singular values: unique
        assert max_diff(ours.norm(), np_(theirs.norm())) <= 1e-4
        assert max_diff(ours.get_corner(3), np_(theirs.get_corner(3))) <= 1e-4
        # U, V are unique only up to signs: their products and collapsed forms are not.
        assert max_diff((ours.U * ours.S[..., None, :]) @ ours.V.swapaxes(-1, -2),
                        np_(theirs.AB)) <= 1e-4
        ev, ref_ev = np.sort_complex(np.asarray(ours.eigenvalues)), np.sort_complex(np_(theirs.eigenvalues))
        assert np.abs(ev - ref_ev).max() <= 1e-3 * max(1.0, np.abs(ref_ev).max())


def test_algebra_and_indexing(pair):
    tl, model = pair
    OV, tOV = model.OV, tl.OV
    x = np.random.default_rng(0).normal(size=(model.cfg.d_model, 5)).astype(np.float32)
    assert max_diff((OV @ x).AB, np_((tOV @ torch.tensor(x)).AB)) <= 1e-4
    assert max_diff((x.T @ OV).AB, np_((torch.tensor(x.T) @ tOV).AB)) <= 1e-4
    assert max_diff((OV @ model.QK).AB, np_((tOV @ tl.QK).AB)) <= 1e-3
    assert max_diff(OV @ x[:, 0], np_(tOV @ torch.tensor(x[:, 0]))) <= 1e-4
    for idx in (1, (1, 2), (0, 1, 3), (0, 1, slice(0, 4), 2)):
        assert max_diff(OV[idx].AB, np_(tOV[idx].AB)) <= 1e-4, idx
    assert max_diff(OV.T.AB, np_(tOV.T.AB)) <= 1e-4
    assert max_diff((2.0 * OV).AB, 2 * np_(tOV.AB)) <= 1e-4
    even = OV.make_even()
    assert max_diff(even.AB, np_(tOV.AB)) <= 1e-4
    assert max_diff(even.A.swapaxes(-1, -2) @ even.A, even.B @ even.B.swapaxes(-1, -2)) <= 1e-4
    with pytest.raises(ValueError, match="inner dimensions"):
        FactoredMatrix(np.ones((3, 4)), np.ones((5, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_all_composition_scores(pair, mode):
    tl, model = pair
    assert max_diff(model.all_composition_scores(mode), np_(tl.all_composition_scores(mode))) <= 1e-4


def test_composition_scores_without_broadcasting(pair):
    from transformer_lens.utils import composition_scores as tl_scores

    tl, model = pair
    ours = composition_scores(model.OV[0], model.QK[1], broadcast_dims=False)
    assert max_diff(ours, np_(tl_scores(tl.OV[0], tl.QK[1], broadcast_dims=False))) <= 1e-4
    with pytest.raises(ValueError, match="mode must be"):
        model.all_composition_scores("O")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.slow
def test_circuits_after_fold_ln_match(name):
    """Folding norms into W_Q/W_K/W_V changes the circuits: jtlens.weights.process on the raw
    weights gives the same OV, QK and composition scores as TL's process_weights_."""
    from jtlens import weights

    tl = tl_model(CONFIGS[name])
    cfg, raw = to_jtlens(tl)
    tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model = jtlens.HookedTransformer(weights.processed_config(cfg), weights.process(raw, cfg))
    for circuit in ("OV", "QK"):
        assert max_diff(getattr(model, circuit).AB, np_(getattr(tl, circuit).AB)) <= 1e-4
        assert max_diff(getattr(model, circuit).S, np_(getattr(tl, circuit).S)) <= 1e-4
    assert max_diff(model.all_composition_scores("K"), np_(tl.all_composition_scores("K"))) <= 1e-4


def test_broadcast_leading_axes_and_fm_products():
    from transformer_lens import FactoredMatrix as TLFactored

    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(3, 6, 4)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    C = rng.normal(size=(2, 1, 5, 6)).astype(np.float32)
    ours, theirs = FactoredMatrix(A, B), TLFactored(torch.tensor(A), torch.tensor(B))
    assert ours.shape == tuple(theirs.shape) == (3, 6, 5)
    assert max_diff(ours.S, np_(theirs.S)) <= 1e-4
    other, tother = FactoredMatrix(C, A[0]), TLFactored(torch.tensor(C), torch.tensor(A[0]))
    prod, tprod = ours @ other, theirs @ tother                 # [3,6,5] @ [2,1,5,4] -> [2,3,6,4]
    assert prod.shape == tuple(tprod.shape) == (2, 3, 6, 4)
    assert max_diff(prod.AB, np_(tprod.AB)) <= 1e-4
    # U S^2 V^T: free of the singular vectors' sign ambiguity.
    assert max_diff(ours.collapse_r() @ ours.collapse_l(),
                    np_(theirs.collapse_r() @ theirs.collapse_l())) <= 1e-4
    with pytest.raises(ValueError, match="do not broadcast"):
        FactoredMatrix(np.ones((3, 2, 2)), np.ones((4, 2, 2)))
