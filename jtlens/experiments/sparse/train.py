"""Training SAEs with optax, SAELens's losses, several SAEs in one program.

    tc = TrainConfig("topk", d_in=576, d_sae=9216, k_max=64, total_steps=2000)
    hyper = Hyper.stack([Hyper(k=32), Hyper(k=64)])          # two SAEs, one program
    state = init_state(tc, hyper, jax.random.PRNGKey(0))
    for batch in store:                                       # [B, d_in] activations
        state, metrics = train_step(state, hyper, batch, tc)   # vmapped over the SAE axis
    saes = to_saes(state, hyper, tc, hook_name="blocks.6.hook_resid_post")

Losses (SAELens 6, `training_forward_pass`): MSE summed over d_in, mean over tokens, plus
- standard: l1_coefficient (linear warm-up) * mean_t sum_f |a_f| * ||W_dec[f]||;
- topk / batchtopk: aux_loss_coefficient * AuxK (the top d_in/2 dead latents reconstruct the
  residual; dead = no activation for `dead_feature_window` steps);
- jumprelu: l0_coefficient * mean_t sum_f step(pre_f - threshold_f) with a rectangle-kernel
  straight-through estimator of width `jumprelu_bandwidth` for the threshold.
`Hyper` values (lr, coefficients, k) are arrays, so `jax.vmap` trains a stack of SAEs that differ
in them on the same batches; k up to `k_max` is a mask, not a shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # (imported where used: `import jtlens` need not pay for optax, 0.1 s)
    import optax

from jtlens.experiments.sparse.config import SAEConfig
from jtlens.experiments.sparse.sae import SAE, batchtopk_to_jumprelu

TRAIN_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What is static in a training run (shapes, schedules, the architecture)."""

    architecture: str
    d_in: int
    d_sae: int
    total_steps: int
    k_max: int = 0                      # topk / batchtopk: the largest k any Hyper uses
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0             # linear decay to 0 over the last steps
    l1_warm_up_steps: int = 0
    l0_warm_up_steps: int = 0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    decoder_init_norm: Optional[float] = 0.1
    normalize_decoder: bool = False     # renormalise W_dec rows to 1 after every step
    rescale_acts_by_decoder_norm: bool = False  # topk / batchtopk: SAELens's option (its
    # training default is True): select and decode acts as if W_dec rows had norm 1
    dead_feature_window: int = 1000
    topk_threshold_lr: float = 0.01     # batchtopk: EMA rate of its inference threshold
    d_out: Optional[int] = None         # a transcoder: predicts a d_out-wide target (batches
    # are (input, target) pairs; no b_dec is subtracted from the input)
    skip: bool = False                  # a transcoder's affine skip path W_skip [d_out, d_in]
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    def __post_init__(self):
        if self.architecture not in TRAIN_ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: training supports "
                             f"{TRAIN_ARCHITECTURES}")
        if self.architecture in ("topk", "batchtopk") and not 0 < self.k_max <= self.d_sae:
            raise ValueError(f"a {self.architecture} SAE needs k_max in 1..d_sae={self.d_sae}")
        if self.skip and self.d_out is None:
            raise ValueError("skip=True is a transcoder option: give d_out (the target's width)")
        if self.rescale_acts_by_decoder_norm and self.architecture not in ("topk", "batchtopk"):
            raise ValueError(f"rescale_acts_by_decoder_norm=True is a topk/batchtopk option; a "
                             f"{self.architecture} SAE has none (SAELens's config lacks it too)")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("lr", "l1_coefficient", "l0_coefficient", "aux_loss_coefficient", "k"),
                   meta_fields=())
@dataclasses.dataclass(frozen=True)
class Hyper:
    """Per-SAE hyperparameters (arrays: stack them to train several SAEs at once)."""

    lr: float = 3e-4
    l1_coefficient: float = 1.0
    l0_coefficient: float = 1.0
    aux_loss_coefficient: float = 1.0
    k: float = 0

    @staticmethod
    def stack(hypers) -> "Hyper":
        """One Hyper whose fields have a leading axis, one entry per SAE."""
        return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]),
                                      *hypers)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("params", "opt_state", "step", "since_fired", "topk_threshold"),
                   meta_fields=())
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: dict
    opt_state: optax.OptState
    step: jax.Array
    since_fired: jax.Array      # [d_sae] steps since each latent last fired
    topk_threshold: jax.Array   # batchtopk: the running inference threshold


def _optimizer(tc: TrainConfig):
    import optax

    return optax.scale_by_adam(b1=tc.adam_beta1, b2=tc.adam_beta2)


def init_params(tc: TrainConfig, key) -> dict:
    """SAELens's training init: Kaiming-uniform W_dec rows scaled to decoder_init_norm,
    W_enc = W_dec.T, zero biases, thresholds at jumprelu_init_threshold."""
    arch = "jumprelu" if tc.architecture == "jumprelu" else "standard"
    key, k_enc = jax.random.split(key) if tc.d_out else (key, None)
    sae = SAE.init(SAEConfig(tc.d_out or tc.d_in, tc.d_sae, arch), key, tc.decoder_init_norm)
    params = dict(sae.params)
    if tc.d_out:  # a transcoder: W_enc [d_in, d_sae] Kaiming-uniform on its own, as SAELens's
        bound = (6.0 / tc.d_sae) ** 0.5
        params["W_enc"] = jax.random.uniform(k_enc, (tc.d_in, tc.d_sae), jnp.float32, -bound, bound)
        if tc.skip:
            params["W_skip"] = jnp.zeros((tc.d_out, tc.d_in), jnp.float32)
    if arch == "jumprelu":
        params["threshold"] = jnp.full((tc.d_sae,), tc.jumprelu_init_threshold, jnp.float32)
    return params


def init_state(tc: TrainConfig, hyper: Hyper, key) -> TrainState:
    """A fresh state; with a stacked `hyper` (leading axis n) a stack of n SAEs, each from its
    own key."""
    n = jnp.shape(hyper.lr)
    keys = jax.random.split(key, n[0]) if n else key
    one = lambda k: _fresh(tc, k)  # noqa: E731
    return jax.vmap(one)(keys) if n else one(keys)


def _fresh(tc: TrainConfig, key) -> TrainState:
    params = init_params(tc, key)
    return TrainState(params, _optimizer(tc).init(params), jnp.zeros((), jnp.int32),
                      jnp.zeros((tc.d_sae,), jnp.int32), jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------- activations

def _rect(x):
    return ((x > -0.5) & (x < 0.5)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(x, threshold, bandwidth: float):
    """x * (x > threshold); the threshold's gradient by SAELens's rectangle-kernel STE."""
    return x * (x > threshold)


def _jumprelu_fwd(x, threshold, bandwidth):
    return jumprelu(x, threshold, bandwidth), (x, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    x, threshold = res
    ste = threshold / bandwidth * _rect((x - threshold) / bandwidth) * g
    return (x > threshold) * g, -ste.reshape(-1, x.shape[-1]).sum(0)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step_fn(x, threshold, bandwidth: float):
    """(x > threshold) as floats; the threshold's gradient by the rectangle-kernel STE."""
    return (x > threshold).astype(x.dtype)


def _step_fwd(x, threshold, bandwidth):
    return step_fn(x, threshold, bandwidth), (x, threshold)


def _step_bwd(bandwidth, res, g):
    x, threshold = res
    ste = 1.0 / bandwidth * _rect((x - threshold) / bandwidth) * g
    return jnp.zeros_like(x), -ste.reshape(-1, x.shape[-1]).sum(0)


step_fn.defvjp(_step_fwd, _step_bwd)


def masked_topk(x, k, k_max: int):
    """The top `k` entries of each row of x [B, d_sae] (k: a traced number <= k_max), ReLU-ed,
    as (values [B, k_max], latent indices [B, k_max]); entries past k are 0."""
    values, idx = jax.lax.top_k(x, k_max)
    return jnp.where(jnp.arange(k_max) < k, jax.nn.relu(values), 0.0), idx


def scatter_rows(values, idx, width: int):
    """Dense rows [B, width] holding `values` [B, k] at `idx` [B, k], zeros elsewhere."""
    return jnp.zeros((values.shape[0], width), values.dtype).at[
        jnp.arange(values.shape[0])[:, None], idx].set(values)


def batch_topk(x, k):
    """SAELens's BatchTopK: ReLU, then the k * n_tokens largest activations of the whole batch."""
    acts = jax.nn.relu(x)
    flat = acts.reshape(-1)
    n = x.reshape(-1, x.shape[-1]).shape[0]
    kth = -jnp.sort(-flat)[jnp.clip(jnp.floor(k * n).astype(jnp.int32) - 1, 0, flat.size - 1)]
    return jnp.where(acts >= kth, acts, 0.0)


# ----------------------------------------------------------------------------- losses

def _warm(step, warm_up: int):
    return jnp.minimum(1.0, (step + 1) / warm_up) if warm_up else 1.0


def losses(params: dict, hyper: Hyper, x, tc: TrainConfig, dead_mask=None, step=0, target=None):
    """(total loss, (feature acts, sae_out, {loss name: value})) for activations x [B, d_in];
    a transcoder reconstructs `target` [B, d_out] instead of x."""
    y = x if target is None else target
    sae_in = x if tc.d_out else x - params["b_dec"]
    pre = sae_in @ params["W_enc"] + params["b_enc"]
    arch = tc.architecture
    dec_norm = jnp.linalg.norm(params["W_dec"], axis=-1)
    # rescaled: latents are chosen and decoded as if every W_dec row had norm 1
    unit = dec_norm if tc.rescale_acts_by_decoder_norm else None
    if unit is not None:
        pre = pre * unit
    if arch == "topk":
        # decode only the k_max chosen rows of W_dec: a gather instead of a [B, d_sae] matmul,
        # forward and backward (the dense acts are built for the metrics only)
        values, idx = masked_topk(pre, hyper.k, tc.k_max)
        acts = scatter_rows(values, idx, tc.d_sae)
        dec = values if unit is None else values / unit[idx]
        out = jnp.einsum("bk,bkd->bd", dec, params["W_dec"][idx]) + params["b_dec"]
    else:
        if arch == "standard":
            acts = jax.nn.relu(pre)
        elif arch == "batchtopk":
            acts = batch_topk(pre, hyper.k)
        else:
            acts = jumprelu(pre, params["threshold"], tc.jumprelu_bandwidth)
        out = (acts if unit is None else acts / unit) @ params["W_dec"] + params["b_dec"]
    if tc.skip:
        out = out + x @ params["W_skip"].T
    parts = {"mse_loss": ((out - y) ** 2).sum(-1).mean()}
    if arch == "standard":
        coeff = hyper.l1_coefficient * _warm(step, tc.l1_warm_up_steps)
        parts["l1_loss"] = coeff * (acts * dec_norm).sum(-1).mean()
    elif arch == "jumprelu":
        coeff = hyper.l0_coefficient * _warm(step, tc.l0_warm_up_steps)
        l0 = step_fn(pre, params["threshold"], tc.jumprelu_bandwidth).sum(-1)
        parts["l0_loss"] = coeff * l0.mean()
    elif dead_mask is None:  # no dead latents: SAELens's AuxK is 0 then
        parts["auxiliary_reconstruction_loss"] = jnp.zeros((), out.dtype)
    else:
        parts["auxiliary_reconstruction_loss"] = hyper.aux_loss_coefficient * auxk_loss(
            params, pre, jax.lax.stop_gradient(y - out), dead_mask, unit)
    return sum(parts.values()), (acts, out, parts)


def auxk_loss(params, pre, residual, dead_mask, unit=None):
    """AuxK: the top d_in/2 dead latents (by pre-activation) reconstruct the residual (no
    bias), scaled by min(n_dead / (d_in/2), 1); 0 without dead latents. (`train_step` skips it
    while no latent is dead, as SAELens does: its top-k over every latent is costly.) `unit`:
    the decoder norms the latents are divided by first (rescale_acts_by_decoder_norm)."""
    d_in = residual.shape[-1]
    k_aux = d_in // 2
    n_dead = dead_mask.sum()
    latents = jnp.where(dead_mask, pre, -jnp.inf)
    # at most d_sae latents exist (a dictionary narrower than d_in / 2: every one may be dead)
    values, idx = jax.lax.top_k(latents, min(k_aux, latents.shape[-1]))
    keep = jnp.arange(values.shape[-1]) < jnp.minimum(n_dead, k_aux)   # dead ones, at most n_dead
    values = jnp.where(keep & jnp.isfinite(values), values, 0.0)
    if unit is not None:
        values = values / unit[idx]
    # scattered back to [batch, d_sae] and decoded by one product: gathering W_dec's rows
    # ([batch, k_aux, d_out]) held 20 GB for 30 vmapped 2304-latent transcoders at 1024 tokens
    dense = jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(values)
    recon = dense @ params["W_dec"]
    loss = ((recon - residual) ** 2).sum(-1).mean()
    return jnp.where(n_dead > 0, jnp.minimum(n_dead / k_aux, 1.0) * loss, 0.0)


# ----------------------------------------------------------------------------- the step

def lr_at(step, lr, tc: TrainConfig):
    """SAELens's constant schedule: linear warm-up from 0, constant, linear decay to 0."""
    warm = jnp.where(tc.lr_warm_up_steps > 0, jnp.minimum(1.0, (step + 1) / max(tc.lr_warm_up_steps, 1)), 1.0)
    decay_start = tc.total_steps - tc.lr_decay_steps
    decay = jnp.where(tc.lr_decay_steps > 0,
                      jnp.clip((tc.total_steps - step) / max(tc.lr_decay_steps, 1), 0.0, 1.0), 1.0)
    return lr * warm * jnp.where(step >= decay_start, decay, 1.0)


def _one_step(state: TrainState, hyper: Hyper, batch, tc: TrainConfig, aux: bool):
    x, y = batch if isinstance(batch, tuple) else (batch, batch)
    dead = state.since_fired > tc.dead_feature_window  # SAELens: strictly more steps
    use_dead = dead if aux else None
    (loss, (acts, out, parts)), grads = jax.value_and_grad(losses, has_aux=True)(
        state.params, hyper, x, tc, use_dead, state.step, y)
    updates, opt_state = _optimizer(tc).update(grads, state.opt_state, state.params)
    lr = lr_at(state.step, hyper.lr, tc)
    params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
    if tc.normalize_decoder:
        params["W_dec"] = params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
    if "threshold" in params:
        params["threshold"] = jnp.maximum(params["threshold"], 0.0)
    fired = (acts != 0).any(0)
    since = jnp.where(fired, 0, state.since_fired + 1)
    thr = state.topk_threshold
    if tc.architecture == "batchtopk":
        min_pos = jnp.min(jnp.where(acts > 0, acts, jnp.inf))
        thr = jnp.where(jnp.isfinite(min_pos),
                        (1 - tc.topk_threshold_lr) * thr + tc.topk_threshold_lr * min_pos, thr)
    resid = ((y - out) ** 2).sum(-1).mean()
    var = ((y - y.mean(0)) ** 2).sum(-1).mean()
    metrics = {"loss": loss, **parts, "l0": (acts != 0).sum(-1).mean(),
               "explained_variance": 1 - resid / var, "dead_features": dead.sum()}
    return TrainState(params, opt_state, state.step + 1, since, thr), metrics


@functools.partial(jax.jit, static_argnames=("tc",), donate_argnums=(0,))
def train_step(state: TrainState, hyper: Hyper, batch, tc: TrainConfig):
    """One optimiser step on activations `batch` [B, d_in] -> (state, metrics). With a stacked
    state/hyper (leading axis n) all n SAEs step on the same batch, or on `batch` [n, B, d_in]
    (one hook point each). A transcoder's batch is a pair (inputs, targets), each shaped so."""
    def run(aux: bool):
        one = functools.partial(_one_step, tc=tc, aux=aux)
        if jnp.ndim(hyper.lr) == 0:
            return one
        x = batch[0] if isinstance(batch, tuple) else batch
        return jax.vmap(one, in_axes=(0, 0, 0 if x.ndim == 3 else None))

    if tc.architecture not in ("topk", "batchtopk"):
        return run(False)(state, hyper, batch)
    # AuxK only once some latent (of any SAE) is dead: a cond outside the vmap, so the SAEs
    # without dead latents do not pay for the top-k either way
    any_dead = (state.since_fired > tc.dead_feature_window).any()
    return jax.lax.cond(any_dead, run(True), run(False), state, hyper, batch)


def to_sae(params: dict, hyper: Hyper, tc: TrainConfig, topk_threshold=None, **metadata) -> SAE:
    """The inference SAE of one trained parameter set (batchtopk -> jumprelu, as SAELens saves;
    rescaled decoder norms folded into W_enc, b_enc and W_dec, as SAELens saves)."""
    p = {n: params[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if tc.rescale_acts_by_decoder_norm:
        norm = jnp.linalg.norm(p["W_dec"], axis=-1)
        p.update(W_enc=p["W_enc"] * norm, b_enc=p["b_enc"] * norm, W_dec=p["W_dec"] / norm[:, None])
    if tc.architecture == "jumprelu":
        return SAE({**p, "threshold": params["threshold"]},
                   SAEConfig(tc.d_in, tc.d_sae, "jumprelu", metadata=metadata))
    if tc.architecture == "topk":
        return SAE(p, SAEConfig(tc.d_in, tc.d_sae, "topk", k=int(hyper.k), metadata=metadata))
    sae = SAE(p, SAEConfig(tc.d_in, tc.d_sae, "standard", metadata=metadata))
    return batchtopk_to_jumprelu(sae, float(topk_threshold)) if tc.architecture == "batchtopk" else sae


def to_saes(state: TrainState, hyper: Hyper, tc: TrainConfig, **metadata) -> list[SAE]:
    """The inference SAEs of a stacked state (one per entry of the leading axis)."""
    n = jnp.shape(hyper.lr)[0]
    pick = lambda t, i: jax.tree_util.tree_map(lambda a: a[i], t)  # noqa: E731
    return [to_sae(pick(state.params, i), pick(hyper, i), tc, state.topk_threshold[i], **metadata)
            for i in range(n)]


def fit(batches, tc: TrainConfig, hyper: Hyper, key=None, state: Optional[TrainState] = None,
        steps: Optional[int] = None, log_every: int = 50, progress: bool = True):
    """Train for `steps` (default tc.total_steps - state.step) batches from the iterable
    `batches` (e.g. `ActivationStore.batches()`), from `state` or a fresh one from `key`.
    Returns (state, history: a list of {metric: float or per-SAE list}, every log_every steps)."""
    from tqdm.auto import tqdm

    if state is None:
        state = init_state(tc, hyper, jax.random.PRNGKey(0) if key is None else key)
    start = int(jnp.ravel(state.step)[0])
    steps = tc.total_steps - start if steps is None else steps
    history = []
    it = iter(batches)
    for i in tqdm(range(steps), disable=not progress, desc="SAE training"):
        state, metrics = train_step(state, hyper, next(it), tc)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            history.append({"step": start + i + 1,
                            **{k: jnp.asarray(v).tolist() for k, v in metrics.items()}})
    return state, history


def save_state(state: TrainState, path, overwrite: bool = False):
    """Write a TrainState (params, optimiser state, counters) atomically, to resume with
    `load_state`."""
    from flax import serialization

    from jtlens.io.checkpoint_io import write_folder

    # the leaves in tree order: optax's state classes are not flax-serialisable themselves
    data = serialization.to_bytes(jax.device_get(jax.tree_util.tree_leaves(state)))
    return write_folder(path, lambda tmp: (tmp / "train_state.msgpack").write_bytes(data), overwrite)


def load_state(path, like: TrainState) -> TrainState:
    """The TrainState saved at `path`; `like` is a state of the same shapes (`init_state`)."""
    import pathlib

    from flax import serialization

    from jtlens.io.checkpoint_io import check_manifest

    check_manifest(pathlib.Path(path))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    data = (pathlib.Path(path) / "train_state.msgpack").read_bytes()
    return jax.tree_util.tree_unflatten(treedef, serialization.from_bytes(leaves, data))
