"""TransformerLens 3.x's tests/unit/factored_matrix/*.py, ported (see tests/tl_port.py): each test
names the one it mirrors and runs on TransformerLens 3.9 and on jtlens."""

import numpy as np
import pytest

from tests.tl_port import close, lib, np_  # noqa: F401  (lib is the fixture)

RNG = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def rand(*shape):
    return RNG.random(shape).astype(np.float32)


def repeat(x, *lead):
    return np.broadcast_to(x, lead + x.shape).copy()


# ------------------------------------------------------------------ test_constructor.py
def test_factored_matrix(lib):
    A, B = randn(5, 3), randn(3, 7)
    f = lib.FactoredMatrix(lib.tensor(A), lib.tensor(B))
    assert close(f.A, A) and close(f.B, B)
    assert (f.ldim, f.mdim, f.rdim) == (5, 3, 7)
    assert not f.has_leading_dims
    assert tuple(f.shape) == (5, 7)


@pytest.mark.parametrize("a_shape", [(5, 3), (4, 5, 3)], ids=["b_leading_dims", "a_b_leading_dims"])
def test_factored_matrix_leading_dims(lib, a_shape):
    A, B = np.ones(a_shape, np.float32), np.ones((2, 4, 3, 7), np.float32)
    f = lib.FactoredMatrix(lib.tensor(A), lib.tensor(B))
    assert tuple(f.A.shape) == (2, 4, 5, 3)
    assert close(f.B, B)
    assert (f.ldim, f.mdim, f.rdim) == (5, 3, 7)
    assert f.has_leading_dims
    assert tuple(f.shape) == (2, 4, 5, 7)


def test_factored_matrix_broadcast_mismatch(lib):
    with pytest.raises(RuntimeError, match=r"[Mm]ismatch"):
        lib.FactoredMatrix(lib.tensor(np.ones((9, 5, 3))), lib.tensor(np.ones((2, 4, 3, 7))))


def test_factored_matrix_inner_mismatch(lib, request):
    # TransformerLens skips this test (jaxtyping checks reach the mismatch first in its CI);
    # run here, TL 3.9's assert holds.
    with pytest.raises(AssertionError) as e:
        lib.FactoredMatrix(lib.tensor(np.ones((2, 3, 4))), lib.tensor(np.ones((2, 3, 5))))
    assert "inner dimension" in str(e.value)


# ------------------------------------------------------------------ test_get_item.py
@pytest.fixture
def sample(lib):
    A, B = rand(2, 2, 2, 2, 2), rand(2, 2, 2, 2, 2)
    return lib.FactoredMatrix(lib.tensor(A), lib.tensor(B))


@pytest.mark.parametrize("idx", [0, (0, 1), (slice(None), 1), (slice(None), slice(None), 1)],
                         ids=["int", "tuple", "slice", "multiple_slices"])
def test_getitem(sample, idx):
    result = sample[idx]
    assert close(result.A, np_(sample.A)[idx]) and close(result.B, np_(sample.B)[idx])


def test_getitem_error(sample):
    with pytest.raises(IndexError):
        _ = sample[(0, 1, 2)]


@pytest.mark.parametrize("idx", [(0, 0, 0, 1), (0, 0, 0, 0, 1)], ids=["get_line", "get_element"])
def test_index_dimension(sample, idx):
    assert close(np_(sample[idx].AB).squeeze(), np_(sample.AB)[idx])


def test_index_dimension_too_big(sample):
    with pytest.raises(Exception):
        _ = sample[1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("b_idx", [[0], 0], ids=["sequences", "sequences_and_ints"])
def test_getitem_sequences(sample, b_idx):
    result = sample[:, :, :, [0, 1], b_idx]
    assert close(result.A, np_(sample.A)[:, :, :, [0, 1], :])
    b = np_(result.B)
    assert close(b if isinstance(b_idx, list) else b.squeeze(-1), np_(sample.B)[:, :, :, :, b_idx])


def test_getitem_tensors(lib, sample):
    # TL indexes with torch tensors; jtlens with the array type it is given (lib.tensor).
    a_idx, b_idx = lib.tensor(np.array([0, 1])), lib.tensor(np.array([0]))
    result = sample[:, :, :, a_idx, b_idx]
    assert close(result.A, np_(sample.A)[:, :, :, [0, 1], :])
    assert close(result.B, np_(sample.B)[:, :, :, :, [0]])


# ------------------------------------------------------------------ test_multiply_by_factored_matrix.py
FM_PAIRS = {
    "both have ldim == mdim == rdim": ((3, 3, 3), (3, 3, 3)),
    "both have ldim == mdim == rdim == 1": ((1, 1, 1), (1, 1, 1)),
    "both have ldim == rdim == 1 != mdim": ((1, 2, 1), (1, 6, 1)),
    "A has ldim == mdim == rdim == 1": ((1, 1, 1), (1, 2, 5)),
    "B has ldim == mdim == rdim == 1": ((5, 2, 1), (1, 1, 1)),
    "A has ldim == 1": ((1, 2, 3), (3, 2, 4)),
    "B has ldim == 1": ((3, 2, 1), (1, 3, 2)),
    "A has ldim == 1 and B has rdim == 1": ((1, 2, 5), (5, 3, 1)),
    "both have rdim > mdim": ((3, 4, 5), (5, 6, 7)),
    "both have rdim < mdim": ((8, 6, 5), (5, 7, 3)),
    "both have rdim == mdim": ((3, 4, 4), (4, 5, 5)),
    "A has rdim < mdim and B has rdim > mdim": ((7, 6, 3), (3, 7, 8)),
}


def _pair(dims):
    l, m, r = dims
    return randn(l, m), randn(m, r)


def _multiply_fm(lib, a_left, a_right, b_left, b_right):
    fa = lib.FactoredMatrix(lib.tensor(a_left), lib.tensor(a_right))
    fb = lib.FactoredMatrix(lib.tensor(b_left), lib.tensor(b_right))
    product = fa @ fb
    assert close(product.AB, (a_left @ a_right) @ (b_left @ b_right), atol=1e-4, rtol=1e-4)
    assert product.ldim == fa.ldim
    assert product.mdim == min(fa.mdim, fa.rdim, fb.ldim, fb.mdim)
    assert product.rdim == fb.rdim
    return product


@pytest.mark.parametrize("lead", ["none", "A", "B", "both"])
@pytest.mark.parametrize("dims", list(FM_PAIRS.values()), ids=list(FM_PAIRS))
def test_multiply_by_factored_matrix(lib, dims, lead):
    (al, ar), (bl, br) = _pair(dims[0]), _pair(dims[1])
    if lead == "A":
        al, ar = repeat(al, 2), repeat(ar, 2)
    elif lead == "B":
        bl, br = repeat(bl, 2), repeat(br, 2)
    elif lead == "both":
        al, ar, bl, br = repeat(al, 2, 9), repeat(ar, 2, 9), repeat(bl, 9), repeat(br, 9)
    product = _multiply_fm(lib, al, ar, bl, br)
    want = {"none": (), "A": (2,), "B": (2,), "both": (2, 9)}[lead]
    assert tuple(product.A.shape[:len(want)]) == want and tuple(product.B.shape[:len(want)]) == want


FM_MISMATCH = [
    (((2, 3, 4), (2, 4, 6)), ((4, 6, 7), (4, 7, 2)), RuntimeError),
    (((2, 9, 3, 4), (2, 9, 4, 6)), ((2, 6, 7), (2, 7, 2)), RuntimeError),
    (((3, 4), (4, 6)), ((5, 6), (6, 7)), AssertionError),
    (((3, 4), (4, 6)), ((2, 5, 6), (2, 6, 7)), AssertionError),
]
MISMATCH_IDS = ["leading dims, one each", "leading dims, two and one", "inner dimension",
                "inner dimension with batch"]


@pytest.mark.parametrize("a, b, error", FM_MISMATCH, ids=MISMATCH_IDS)
def test_factored_dimension_mismatch(lib, a, b, error):
    fa = lib.FactoredMatrix(*(lib.tensor(randn(*s)) for s in a))
    fb = lib.FactoredMatrix(*(lib.tensor(randn(*s)) for s in b))
    with pytest.raises(error):
        _ = fa @ fb


# ------------------------------------------------------------------ test_multiply_by_matrix.py
LEFT = {"rdim > mdim": ((2, 3), (3, 4), (4, 5)), "rdim < mdim": ((2, 6), (6, 4), (4, 5)),
        "rdim == mdim": ((2, 4), (4, 4), (4, 5))}
RIGHT = {"ldim > mdim": ((6, 3), (3, 4), (4, 6)), "ldim < mdim": ((2, 6), (6, 4), (4, 2)),
         "ldim == mdim": ((2, 2), (2, 4), (4, 2))}
LEADS = {"plain": ((), ()), "factored_matrix_has_leading_dim": ((2,), ()),
         "matrix_has_leading_dims": ((), (2, 12)), "both_have_leading_dim": ((2,), (2,))}


@pytest.mark.parametrize("lead", list(LEADS))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_multiply_by_matrix(lib, side, case, lead):
    shapes = list((LEFT if side == "left" else RIGHT).values())[case]
    a, b, matrix = (randn(*s) for s in shapes)
    fm_lead, m_lead = LEADS[lead]
    if fm_lead:
        a, b = repeat(a, *fm_lead), repeat(b, *fm_lead)
    if m_lead:
        matrix = repeat(matrix, *m_lead)
    fm = lib.FactoredMatrix(lib.tensor(a), lib.tensor(b))
    if side == "left":
        product, expected = fm @ lib.tensor(matrix), (a @ b) @ matrix
        assert product.ldim == fm.ldim and product.rdim == matrix.shape[-1]
        assert product.mdim == min(fm.mdim, matrix.shape[-2])
    else:
        product, expected = lib.tensor(matrix) @ fm, matrix @ (a @ b)
        assert product.ldim == matrix.shape[-2] and product.rdim == fm.rdim
        assert product.mdim == min(fm.mdim, matrix.shape[-1])
    assert close(product.AB, expected, atol=1e-4, rtol=1e-4)
    want = fm_lead or m_lead
    assert tuple(product.A.shape[:-2]) == want and tuple(product.B.shape[:-2]) == want


MATRIX_MISMATCH = [
    (((2, 3, 4), (2, 4, 6)), (4, 6, 7), (4, 6, 3), RuntimeError),
    (((2, 9, 3, 4), (2, 9, 4, 6)), (2, 6, 7), (2, 6, 3), RuntimeError),
    (((3, 4), (4, 6)), (5, 6), (5, 6), AssertionError),
    (((3, 4), (4, 6)), (2, 5, 6), (2, 5, 6), AssertionError),
]


@pytest.mark.parametrize("fm, left_shape, right_shape, error", MATRIX_MISMATCH, ids=MISMATCH_IDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_matrix_dimension_mismatch(lib, side, fm, left_shape, right_shape, error):
    fm = lib.FactoredMatrix(*(lib.tensor(randn(*s)) for s in fm))
    with pytest.raises(error):
        if side == "left":
            _ = fm @ lib.tensor(randn(*left_shape))
        else:
            _ = lib.tensor(randn(*right_shape)) @ fm


# ------------------------------------------------------------------ test_multiply_by_scalar.py
SCALARS = {"tensor": (lambda: rand(1), None), "float": (lambda: float(RNG.random()), None),
           "int": (lambda: int(RNG.integers(-100, 100)), None),
           "tensor_2d": (lambda: rand(2, 2), AssertionError),
           "tensor_1d": (lambda: rand(2), AssertionError)}


@pytest.mark.parametrize("multiply_from_left", [False, True])
@pytest.mark.parametrize("leading_dim", [False, True])
@pytest.mark.parametrize("kind", list(SCALARS))
def test_multiply_by_scalar(lib, kind, leading_dim, multiply_from_left):
    make, error = SCALARS[kind]
    raw = make()
    scalar = lib.tensor(raw) if isinstance(raw, np.ndarray) else raw
    a, b = (rand(6, 2, 3), rand(6, 3, 4)) if leading_dim else (rand(2, 3), rand(3, 4))
    fm = lib.FactoredMatrix(lib.tensor(a), lib.tensor(b))
    if error:
        with pytest.raises(error):
            _ = fm * scalar if multiply_from_left else scalar * fm
        return
    out = fm * scalar if multiply_from_left else scalar * fm
    assert close(out.AB, (a @ b) * np.asarray(raw, np.float32))
    assert close(out.A, a * np.asarray(raw, np.float32))


# ------------------------------------------------------------------ test_multiply_by_vector.py
@pytest.mark.parametrize("leading_dim", [False, True])
@pytest.mark.parametrize("side", ["left", "right"])
def test_matmul_by_vector(lib, side, leading_dim):
    a, b = (rand(6, 2, 3), rand(6, 3, 4)) if leading_dim else (rand(2, 3), rand(3, 4))
    fm = lib.FactoredMatrix(lib.tensor(a), lib.tensor(b))
    if side == "left":
        v = rand(4)
        assert close(fm @ lib.tensor(v), (a @ b) @ v)
    else:
        v = rand(2)
        assert close(lib.tensor(v) @ fm, v @ (a @ b))


# ------------------------------------------------------------------ test_properties.py
PROPERTY_SHAPES = [((3, 2), (2, 3)), ((4, 5), (5, 4)), ((6, 7), (7, 6)), ((6, 7), (7, 3))]


@pytest.fixture
def matrices(lib):
    pairs = [(randn(*a), randn(*b)) for a, b in PROPERTY_SHAPES]
    return pairs, [lib.FactoredMatrix(lib.tensor(a), lib.tensor(b)) for a, b in pairs]


def _t(x):
    return np.swapaxes(np_(x), -1, -2)


def test_AB_BA_T_pair_ndim(matrices):
    for (a, b), fm in zip(*matrices):
        assert close(fm.AB, a @ b)
        if a.shape[-2] == b.shape[-1]:
            assert close(fm.BA, b @ a)
        else:
            with pytest.raises(AssertionError):
                _ = fm.BA
        assert close(fm.T.A, _t(fm.B)) and close(fm.T.B, _t(fm.A))
        assert close(fm.pair[0], a) and close(fm.pair[1], b)
        assert fm.ndim == max(a.ndim, b.ndim) == len(fm.shape)


@pytest.mark.parametrize("leading_ones", [False, True])
@pytest.mark.slow
def test_svd_property(lib, matrices, leading_ones):
    fms = ([lib.FactoredMatrix(lib.tensor(randn(1, 8, 9)), lib.tensor(randn(1, 9, 8)))]
           if leading_ones else matrices[1])
    for fm in fms:
        U, S, V = (np_(x) for x in fm.svd())
        assert np.allclose(np_(fm.AB), U @ (S[..., :, None] * _t(V)), atol=1e-5)
        eye = np.eye(U.shape[-1])
        assert np.allclose(_t(U) @ U, eye, atol=1e-5) and np.allclose(_t(V) @ V, eye, atol=1e-5)


def test_eigenvalues_property(matrices):
    for (a, b), fm in zip(*matrices):
        if fm.ldim == fm.rdim:
            expected = np.linalg.eigvals((b @ a).astype(np.float64))
            assert np.allclose(np.sort(np.abs(np_(fm.eigenvalues))), np.sort(np.abs(expected)),
                               atol=1e-4)
        else:
            with pytest.raises(AssertionError):
                _ = fm.eigenvalues


def test_norm_property(matrices):
    for (a, b), fm in zip(*matrices):
        assert np.allclose(np_(fm.norm()), np.linalg.norm(a @ b), atol=1e-5)


def test_get_corner(lib, matrices):
    for (a, b), fm in zip(*matrices):
        assert close(fm.get_corner(3), lib.utils.get_corner(lib.tensor(a[:3] @ b[:, :3]), 3))


def test_collapse_l_r(matrices):
    for _, fm in zip(*matrices):
        assert close(fm.collapse_l(), np_(fm.S)[..., :, None] * _t(fm.V))
        assert close(fm.collapse_r(), np_(fm.U) * np_(fm.S)[..., None, :])


def test_unsqueeze(lib):
    a, b = randn(1, 8, 9), randn(1, 9, 8)
    result = lib.FactoredMatrix(lib.tensor(a[None]), lib.tensor(b[None]))
    assert close(result.A, a[None]) and close(result.B, b[None])
    fm = lib.FactoredMatrix(lib.tensor(a), lib.tensor(b)).unsqueeze(0)
    assert tuple(fm.shape) == (1, 1, 8, 8)


def test_eigenvalues_bfloat16_support(lib):
    import ml_dtypes

    for l, m in ((3, 2), (10, 4)):
        a, b = randn(l, m).astype(ml_dtypes.bfloat16), randn(m, l).astype(ml_dtypes.bfloat16)
        if lib.name == "transformer_lens":
            from tests.oracle import torch

            to = lambda x: torch.as_tensor(x.astype(np.float32)).to(torch.bfloat16)  # noqa: E731
        else:
            to = lib.tensor
        fm = lib.FactoredMatrix(to(a), to(b))
        eig = np_(fm.eigenvalues)
        assert np.iscomplexobj(eig)
        expected = np.linalg.eigvals(b.astype(np.float32) @ a.astype(np.float32))
        assert np.allclose(np.sort(np.abs(eig)), np.sort(np.abs(expected)), atol=1e-2, rtol=1e-2)
