"""FactoredMatrix.norm() from the factors: equal to the product's Frobenius norm, without an SVD."""

import numpy as np

from jtlens import FactoredMatrix
from jtlens.factored_matrix import InnerDimensionError, LeadingAxesError


def test_norm_uses_no_svd_and_matches_the_product():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((3, 4, 96, 8)), rng.standard_normal((3, 4, 8, 80))
    fm = FactoredMatrix(A.astype(np.float32), B.astype(np.float32))
    norm = np.asarray(fm.norm())
    assert "_svd" not in fm.__dict__  # no SVD was computed
    np.testing.assert_allclose(norm, np.linalg.norm(A @ B, axis=(-2, -1)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fm.S ** 2).sum(-1) ** 0.5, norm, rtol=1e-5)


def test_shape_errors_are_value_errors_with_transformer_lens_types():
    assert issubclass(InnerDimensionError, ValueError) and issubclass(InnerDimensionError, AssertionError)
    assert issubclass(LeadingAxesError, ValueError) and issubclass(LeadingAxesError, RuntimeError)
