"""Linear probes on cached activations, trained with optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm


def train_linear_probe(acts, labels, n_classes: int | None = None, *, steps: int = 300,
                       learning_rate: float = 0.05, l2: float = 1e-4, seed: int = 0,
                       progress: bool = False):
    """Fit a softmax-regression probe `logits = acts @ W + b`.

    acts: [n, d] (e.g. `cache["resid_post", 3][:, -1]`), labels: int [n].
    Returns (probe {"W": [d, n_classes], "b": [n_classes]}, training accuracy).
    """
    import optax  # (here, not at the top: `import jtlens` need not pay for optax, 0.1 s)

    acts, labels = jnp.asarray(acts, jnp.float32), jnp.asarray(labels)
    if acts.ndim != 2 or labels.shape != acts.shape[:1]:
        raise ValueError(f"probe needs acts [n, d] and labels [n]; got {acts.shape} and {labels.shape}")
    n_classes = n_classes or int(labels.max()) + 1
    # Standardise so one learning rate suits activations of any scale.
    mean, std = acts.mean(0), acts.std(0) + 1e-6
    x = (acts - mean) / std
    key = jax.random.PRNGKey(seed)
    params = {"W": 0.01 * jax.random.normal(key, (x.shape[1], n_classes)), "b": jnp.zeros(n_classes)}
    opt = optax.adam(learning_rate)

    def loss(p):
        logits = x @ p["W"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + l2 * jnp.sum(p["W"] ** 2)

    @jax.jit
    def step(p, state):
        g = jax.grad(loss)(p)
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    state = opt.init(params)
    for _ in tqdm(range(steps), desc="probe", disable=not progress):
        params, state = step(params, state)
    # Fold the standardisation back in so the probe applies to raw activations.
    probe = {"W": params["W"] / std[:, None], "b": params["b"] - (mean / std) @ params["W"]}
    return probe, float(probe_accuracy(probe, acts, labels))


def probe_accuracy(probe: dict, acts, labels) -> jax.Array:
    """Fraction of `acts` [n, d] whose argmax probe class equals `labels` [n]."""
    return (jnp.argmax(jnp.asarray(acts) @ probe["W"] + probe["b"], -1) == jnp.asarray(labels)).mean()
