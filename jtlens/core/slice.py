"""`Slice`: TransformerLens's way of saying "these positions / neurons" in analysis arguments."""

from __future__ import annotations

from typing import Union

import numpy as np

SliceInput = Union[None, int, tuple, list, slice, np.ndarray]


def check_in_bounds(index, shape: tuple) -> None:
    """Raise IndexError for an int or int-array entry of `index` (an index or a tuple) past its
    axis, as numpy and torch do: JAX indexing clamps out-of-range indices silently."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        n_rest = sum(i is not None and i is not Ellipsis for i in index)
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - n_rest) + index[at + 1:]
    axis = 0
    for i in index:
        if i is None:
            continue
        if axis >= len(shape):
            raise IndexError(f"too many indices for shape {tuple(shape)}")
        n = shape[axis]
        if isinstance(i, (int, np.integer)) or (hasattr(i, "dtype") and np.issubdtype(i.dtype, np.integer)):
            arr = np.asarray(i)
            if arr.size and (arr.max() >= n or arr.min() < -n):
                raise IndexError(f"index {i if arr.ndim == 0 else arr.tolist()} is out of range for "
                                 f"axis {axis} of size {n}")
        axis += 1


class Slice:
    """An index along one axis: None (everything), an int (drops the axis), a tuple (start,
    stop[, step]) or a slice, or a list/array of indices.

        Slice(-1).apply(x, dim=-2)       # last position, axis removed
        Slice((0, 5)).apply(x, dim=-2)   # positions 0..4
    """

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, list) or hasattr(input_slice, "__array__"):
            self.slice, self.mode = np.asarray(input_slice), "array"
        else:
            raise ValueError(f"Slice: cannot index with {input_slice!r}; use None, an int, a "
                             f"(start, stop[, step]) tuple, a slice or a list/array of indices")

    def apply(self, x, dim: int = 0):
        """`x` indexed along `dim` ([..., n, ...] -> [..., k, ...], or the axis removed for an int)."""
        index = [slice(None)] * x.ndim
        index[dim] = self.slice
        check_in_bounds(tuple(index), x.shape)
        return x[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The selected indices as an int array (`max_ctx` is needed unless this is an int)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("Slice.indices needs max_ctx unless the slice is a single int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input) -> "Slice":
        """Like Slice(x), but an int keeps its axis (becomes [int])."""
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, (int, np.integer)) else slice_input)

    def __repr__(self) -> str:
        return f"Slice({self.slice!r}, mode={self.mode!r})"
