"""A small optax training loop for jtlens models (tiny language models, toy tasks).

    params, losses = jtlens.train.train(params, cfg, batches, steps=500, lr=1e-3)

`batches` yields int token arrays [batch, pos]; the default objective is next-token
cross-entropy from `forward(..., return_type="loss")`. The step is one jitted function.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jtlens.core.config import Config
from jtlens.core.forward import forward

LossFn = Callable[[dict, jax.Array], jax.Array]


def default_optimizer(lr: float, steps: int, *, warmup: int = 0, weight_decay: float = 0.01,
                      clip: float = 1.0) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay to lr/10, and global-norm clipping."""
    warmup = min(warmup, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr / 10)
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay))


def lm_loss(cfg: Config) -> LossFn:
    """Next-token cross-entropy of the model on `tokens` [batch, pos] (scalar)."""
    return lambda params, tokens: forward(params, tokens, cfg, return_type="loss")


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """-> jitted `step(params, opt_state, batch) -> (params, opt_state, loss)`."""

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(params: dict, cfg: Config, batches: Iterable, *, steps: int, lr: float = 1e-3,
          warmup: int = 0, weight_decay: float = 0.01,
          optimizer: Optional[optax.GradientTransformation] = None,
          loss_fn: Optional[LossFn] = None, progress: bool = True,
          log_every: int = 10) -> tuple[dict, list[float]]:
    """Train `params` for `steps` steps on `batches`.

    Args:
      params: the model's params (a pytree; returned updated, the input is not mutated).
      cfg: its Config.
      batches: an iterable of batches (int tokens [batch, pos] for the default loss; anything
        `loss_fn` accepts otherwise); it must yield at least `steps` of them.
      steps, lr, warmup, weight_decay: for the default optimizer (`default_optimizer`).
      optimizer: any optax transformation, replacing the default.
      loss_fn: `f(params, batch) -> scalar`; default: next-token cross-entropy.
      progress: show a tqdm bar with the running loss. log_every: steps between loss syncs.
    Returns: (trained params, the loss at every step as floats).
    """
    if steps < 1:
        raise ValueError(f"steps={steps}; train for at least one step")
    optimizer = optimizer or default_optimizer(lr, steps, warmup=warmup, weight_decay=weight_decay)
    step = make_step(loss_fn or lm_loss(cfg), optimizer)
    opt_state = optimizer.init(params)
    it: Iterator = iter(batches)
    pending: list[jax.Array] = []
    losses: list[float] = []
    bar = tqdm(total=steps, desc="train", disable=not progress)
    for i in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            raise ValueError(f"batches ran out after {i} steps; give at least steps={steps}") from None
        params, opt_state, loss = step(params, opt_state, batch)
        pending.append(loss)
        # Reading a loss blocks on the device, so losses are fetched a few steps at a time.
        if len(pending) == log_every or i == steps - 1:
            losses.extend(float(x) for x in jax.device_get(pending))
            pending = []
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update(1)
    bar.close()
    return params, losses


def random_batches(rng: np.random.Generator, data: np.ndarray, batch: int, seq_len: int
                   ) -> Iterator[jnp.ndarray]:
    """Endless random windows [batch, seq_len] from a 1-D token stream `data`."""
    if len(data) <= seq_len:
        raise ValueError(f"the token stream has {len(data)} tokens; need more than seq_len={seq_len}")
    while True:
        starts = rng.integers(0, len(data) - seq_len, batch)
        yield jnp.asarray(np.stack([data[s:s + seq_len] for s in starts]).astype(np.int32))
