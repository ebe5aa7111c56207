"""SAE training with the latents split over a device mesh axis.

    mesh = jtlens.sharding.make_mesh(model=8)
    state = shard_latents(init_state(tc, hyper, key), mesh)   # W_enc columns, W_dec rows split
    state, metrics = train_step(state, hyper, batch, tc)        # jit + GSPMD do the rest

Every tensor with a latent axis (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, threshold,
their Adam moments, the dead-latent counters) is split along it; everything else (b_dec, the step)
is replicated. A stacked state (several SAEs, leading axis) keeps that axis whole. The train step
never mentions devices: jit compiles it for the shardings its inputs carry.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jtlens.io.sharding import place

# the latent axis of each named tensor, counted from the end (so a stacked state works too)
LATENT_AXIS = {"W_enc": -1, "W_dec": -2, "b_enc": -1, "threshold": -1, "since_fired": -1}


def _name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", "")))


def latent_specs(state, axis: str = "model"):
    """The PartitionSpec of every leaf of a TrainState: its latent axis over mesh `axis`."""
    def spec(path, leaf):
        at = LATENT_AXIS.get(_name(path))
        if at is None:
            return P()
        dims = [None] * leaf.ndim
        dims[at] = axis
        return P(*dims)

    return jax.tree_util.tree_map_with_path(spec, state)


def shard_latents(state, mesh: Mesh, axis: str = "model"):
    """`state` (a TrainState) placed on `mesh` with its latents split over `axis`."""
    size = mesh.shape[axis]
    d_sae = state.since_fired.shape[-1]
    if d_sae % size:
        raise ValueError(f"d_sae={d_sae} latents do not split evenly over the {size} devices of "
                         f"mesh axis {axis!r}; pick a d_sae that {size} divides")
    return jax.tree_util.tree_map(lambda leaf, s: place(leaf, NamedSharding(mesh, s)), state,
                                  latent_specs(state, axis))
