"""FactoredMatrix: a low-rank product A @ B kept factored (TransformerLens's circuit algebra).

    OV = model.OV                    # [n_layers, n_heads] of [d_model, d_head] @ [d_head, d_model]
    OV[1, 3].S                       # singular values of one head's OV circuit, from the factors
    scores = composition_scores(model.OV, model.QK)

A and B broadcast over leading axes (layers, heads). SVDs go through the small factors, never the
full [ldim, rdim] product, so d_model x d_model circuits of large models stay cheap.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jtlens.core.slice import check_in_bounds


def _as_array(x):
    """x as a jax array (numpy, jax, torch on CPU, anything with __array__), or None."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return jnp.asarray(x)
    except TypeError:
        return None


def _t(x):
    return jnp.swapaxes(x, -1, -2)


# TransformerLens asserts inner dimensions (AssertionError) and lets torch refuse leading axes
# (RuntimeError); these are ValueErrors that also answer to TransformerLens's except clauses.
class InnerDimensionError(ValueError, AssertionError):
    """Factors or operands whose inner dimensions differ."""


class LeadingAxesError(ValueError, RuntimeError):
    """Leading (batch) axes that do not broadcast."""


def _lead(what: str, *shapes) -> tuple:
    """The broadcast of the leading axes of `shapes` (each [..., m, n]), or LeadingAxesError."""
    try:
        return tuple(jnp.broadcast_shapes(*(tuple(s[:-2]) for s in shapes)))
    except ValueError:
        raise LeadingAxesError(f"{what}: leading axes mismatch, shapes {[tuple(s) for s in shapes]} "
                               f"do not broadcast") from None


class FactoredMatrix:
    """`A [..., ldim, mdim] @ B [..., mdim, rdim]`, with leading axes broadcast."""

    __array_ufunc__ = None  # numpy_array @ fm defers to __rmatmul__ instead of coercing fm

    def __init__(self, A, B):
        A, B = _as_array(A), _as_array(B)
        if A is None or B is None or A.ndim < 2 or B.ndim < 2:
            raise ValueError("FactoredMatrix(A, B) takes two arrays of at least 2 axes, "
                             "A [..., ldim, mdim] and B [..., mdim, rdim]")
        if A.shape[-1] != B.shape[-2]:
            raise InnerDimensionError(f"FactoredMatrix: inner dimensions mismatch, A {A.shape} and "
                                      f"B {B.shape}")
        lead = _lead("FactoredMatrix(A, B)", A.shape, B.shape)
        self.A = jnp.broadcast_to(A, lead + A.shape[-2:])
        self.B = jnp.broadcast_to(B, lead + B.shape[-2:])
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.shape = lead + (self.ldim, self.rdim)
        self.has_leading_dims = bool(lead)

    # ------------------------------------------------------------------ products
    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = _as_array(other)
        if other is None:
            return NotImplemented  # a duck-typed operand: Python tries its __rmatmul__
        if other.ndim < 2:
            if other.shape[-1] != self.rdim:
                raise InnerDimensionError(f"FactoredMatrix {self.shape} @ {other.shape}: inner "
                                          f"dimensions mismatch")
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise InnerDimensionError(f"FactoredMatrix {self.shape} @ {other.shape}: inner "
                                      f"dimensions mismatch")
        _lead(f"FactoredMatrix {self.shape} @ {other.shape}", self.shape, other.shape)
        # Keep the smaller inner dimension.
        return (FactoredMatrix(self.A, self.B @ other) if self.rdim > self.mdim
                else FactoredMatrix(self.AB, other))

    def __rmatmul__(self, other):
        other = _as_array(other)
        if other is None:
            return NotImplemented
        if other.shape[-1] != self.ldim:
            raise InnerDimensionError(f"{other.shape} @ FactoredMatrix {self.shape}: inner "
                                      f"dimensions mismatch")
        if other.ndim < 2:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        _lead(f"{other.shape} @ FactoredMatrix {self.shape}", other.shape, self.shape)
        return (FactoredMatrix(other @ self.A, self.B) if self.ldim > self.mdim
                else FactoredMatrix(other, self.AB))

    def __mul__(self, scalar):
        """A one-element scalar or array scales A (broadcasting as A * scalar does, as in
        TransformerLens); anything larger is an InnerDimensionError: use @ for products."""
        x = _as_array(scalar)
        if x is None:
            return NotImplemented
        if x.size != 1:
            raise InnerDimensionError(f"FactoredMatrix * x needs a scalar (a one-element x), got shape "
                                      f"{x.shape}; use @ for matrix products")
        return FactoredMatrix(self.A * x, self.B)

    __rmul__ = __mul__

    @property
    def AB(self):
        """The full product [..., ldim, rdim]."""
        return self.A @ self.B

    @property
    def BA(self):
        """B @ A [..., mdim, mdim] (square factors only)."""
        if self.ldim != self.rdim:
            raise InnerDimensionError(f"BA needs ldim == rdim; shape is {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(_t(self.B), _t(self.A))

    @property
    def pair(self):
        return self.A, self.B

    # ------------------------------------------------------------------ spectra
    @functools.cached_property
    def _svd(self):
        Ua, Sa, Vha = jnp.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = jnp.linalg.svd(self.B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
        Um, Sm, Vhm = jnp.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, Sm, _t(Vhb) @ _t(Vhm)

    def svd(self):
        """(U [..., ldim, mdim], S [..., mdim], V [..., rdim, mdim]) with AB = U diag(S) V^T."""
        return self._svd

    U = property(lambda self: self._svd[0])
    S = property(lambda self: self._svd[1])
    V = property(lambda self: self._svd[2])
    Vh = V  # TransformerLens's name for the same right singular vectors

    @property
    def eigenvalues(self):
        """Eigenvalues of AB (those of the small BA; AB's others are zero) [..., mdim], complex."""
        import numpy as np

        # complex64 always, as torch.linalg.eig (numpy answers float when they happen to be real)
        return jnp.asarray(np.linalg.eigvals(np.asarray(self.BA, np.float64)).astype(np.complex64))

    def norm(self):
        """Frobenius norm [...] from the factors' Gram matrices, ||AB||_F^2 = sum((A^T A) *
        (B B^T)): two [mdim, mdim] products, no SVD and no [ldim, rdim] product (0.7 s for
        GPT-2 small's OV circuits on CPU, where the SVD takes a minute)."""
        if "_svd" in self.__dict__:  # already paid for: the exact spectrum
            return jnp.sqrt((self.S ** 2).sum(-1))
        squared = ((_t(self.A) @ self.A) * (self.B @ _t(self.B))).sum((-2, -1))
        return jnp.sqrt(jnp.maximum(squared, 0.0))  # rounding can take an exact 0 below zero

    def make_even(self) -> "FactoredMatrix":
        """The same product as U sqrt(S) @ sqrt(S) V^T: both halves carry half the spectrum."""
        root = jnp.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _t(self.V))

    def collapse_l(self):
        """S V^T [..., mdim, rdim]: the product with its left orthogonal factor removed."""
        return self.S[..., :, None] * _t(self.V)

    def collapse_r(self):
        """U S [..., ldim, mdim]: the product with its right orthogonal factor removed."""
        return self.U * self.S[..., None, :]

    def get_corner(self, k: int = 3):
        """The top-left k x ... x k corner of AB (every axis cut to k), without forming AB."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    # ------------------------------------------------------------------ shape
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def unsqueeze(self, axis: int) -> "FactoredMatrix":
        return FactoredMatrix(jnp.expand_dims(self.A, axis), jnp.expand_dims(self.B, axis))

    def __getitem__(self, idx) -> "FactoredMatrix":
        """Index leading axes (and, like TransformerLens, the row/column axes as ranges)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        check_in_bounds(idx, self.shape)  # JAX indexing would clamp silently
        lead = len(self.shape) - 2
        n = len([i for i in idx if i is not None])
        if n <= lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n > lead + 2:
            raise ValueError(f"index {idx} is too long for a FactoredMatrix of shape {self.shape}")
        as_range = lambda i: slice(i, i + 1 if i != -1 else None) if isinstance(i, int) else i  # noqa: E731
        idx = idx[:-1] + (as_range(idx[-1]),)
        if n == lead + 1:
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        idx = idx[:-2] + (as_range(idx[-2]), idx[-1])
        return FactoredMatrix(self.A[idx[:-1]], self.B[idx[:-2] + (slice(None), idx[-1])])

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={self.shape}, inner={self.mdim})"


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True):
    """How much `right` reads what `left` writes: |L R| / (|L| |R|) on the collapsed factors.
    With broadcast_dims, left's and right's leading axes are crossed: [*left_lead, *right_lead]."""
    if broadcast_dims:
        l_lead, r_lead = left.ndim - 2, right.ndim - 2
        for i in range(l_lead):
            right = right.unsqueeze(i)
        for i in range(r_lead):
            left = left.unsqueeze(i + l_lead)
    if left.rdim != right.ldim:
        raise ValueError(f"composition needs left.rdim == right.ldim; got {left.shape}, {right.shape}")
    new_left, new_right = left.collapse_l(), right.collapse_r()
    frob = lambda x: jnp.sqrt((x ** 2).sum((-2, -1)))  # noqa: E731
    return frob(new_left @ new_right) / frob(new_right) / frob(new_left)
