"""Feature interventions in the replacement model: set (ablate) or add to (steer) a set of
transcoder features and read the logits; a sweep over many feature sets is one vmapped program.

    logits = intervene(params, cfg, tc, frozen, features, values)            # [pos, d_vocab]
    logits = intervention_sweep(params, cfg, tc, frozen, feature_sets, values)  # [S, pos, d_vocab]

features: int [n, 3] rows (layer, pos, feature), each at most once; values [n]. mode "set"
puts the value in place of the activation (0 ablates), "add" adds it. Later layers' features
are recomputed from the edited stream; with `freeze` (default) attention patterns and norm
scales stay at their values on the prompt (circuit-tracer's constrained interventions),
without it they are recomputed too. In a sweep every set has n rows: pad shorter ones with
rows of layer -1, which change nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.experiments.sparse.replacement import Frozen, run_replacement
from jtlens.experiments.sparse.transcoder import Transcoders

MODES = ("set", "add")


def _editor(features, values, mode: str):
    """edit(layer, acts [pos, d_tc]) applying the rows of `features` that are at `layer`."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use 'set' (0 ablates) or 'add' (steering)")
    features = jnp.asarray(features, jnp.int32).reshape(-1, 3)
    values = jnp.asarray(values, jnp.float32).reshape(-1)
    if features.shape[0] != values.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {values.shape[0]} values: give "
                         f"one value per (layer, pos, feature) row")
    layer, pos, feat = features.T

    def edit(at: int, acts):
        here = layer == at
        current = acts[pos, feat]
        delta = values - current if mode == "set" else values
        # a scatter-add of deltas: rows for other layers add 0 wherever they point
        return acts.at[pos, feat].add(jnp.where(here, delta, 0.0).astype(acts.dtype))

    return edit


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "freeze"))
def intervene(params, cfg: Config, tc: Transcoders, frozen: Frozen, features, values,
              mode: str = "set", freeze: bool = True):
    """The replacement model's logits [pos, d_vocab] with the features edited (module doc)."""
    edit = _editor(features, values, mode)
    return run_replacement(params, cfg, tc, frozen, edit=edit, freeze=freeze)[0]


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "freeze"))
def intervention_sweep(params, cfg: Config, tc: Transcoders, frozen: Frozen, feature_sets, values,
                       mode: str = "set", freeze: bool = True):
    """`intervene` for each of S feature sets [S, n, 3] with values [S, n] -> logits
    [S, pos, d_vocab], as one vmapped program."""
    one = lambda f, v: run_replacement(params, cfg, tc, frozen, edit=_editor(f, v, mode),  # noqa: E731
                                       freeze=freeze)[0]
    return jax.vmap(one)(jnp.asarray(feature_sets), jnp.asarray(values))
