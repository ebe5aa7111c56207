"""An activation store: a token stream through a model, out at one or more hooks, shuffled.

    store = ActivationStore(params, cfg, "blocks.6.hook_resid_post", tokens, context_size=128)
    for batch in store.batches(steps):      # [train_batch_size_tokens, d_in]
        ...

Like SAELens's ActivationsStore: context windows of `context_size` tokens (BOS first when
`prepend_bos`), `store_batch_size_prompts` windows per forward (stopped after the last hooked
layer), `n_batches_in_buffer` forwards per buffer, shuffled, served in batches of
`train_batch_size_tokens`. With several hooks a batch is [n_hooks, tokens, d_in] (one forward
feeds every hook). `cache_dir` keeps each buffer on disk, so a rerun reads activations instead of
running the model.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.hooks import Hooks, split_name
from jtlens.core.forward import forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue


@functools.partial(jax.jit, static_argnames=("cfg", "names", "stop"))
def _acts(params, tokens, cfg, names, stop):
    _, cache = forward_with_cache(params, tokens, cfg, Hooks(capture=names), return_type=None,
                                  stop_at_layer=stop)
    out = []
    for n in names:
        a = cache[n]
        out.append(a.reshape(a.shape[:2] + (-1,)))  # hook_z: heads flattened, as the SAE reads
    return jnp.stack(out)                            # [n_hooks, batch, pos, d_in]


def hook_width(params, cfg: Config, hook_name: str) -> int:
    """The width an SAE at `hook_name` reads (heads flattened for hook_z), from shapes alone."""
    a = jax.eval_shape(lambda p, t: _acts(p, t, cfg, (hook_name,), None), params,
                       jax.ShapeDtypeStruct((1, 2), jnp.int32))
    return a.shape[-1]


def context_windows(tokens, body: int) -> np.ndarray:
    """The token stream `tokens` [n] cut in order into windows [n // body, body] (the tail that
    does not fill one is dropped)."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.size < body:
        raise ValueError(f"the token stream has {tokens.size} tokens, fewer than one "
                         f"context window ({body})")
    return tokens[: tokens.size // body * body].reshape(-1, body)


class ActivationStore:
    """Activations at `hook_names` of the model (params, cfg) over the token stream `tokens`.

    Args:
      tokens: int [n] stream (e.g. `corpus_tokens`), cut into windows in order, cycling.
      prepend_bos / bos_token_id: windows start with BOS (context_size - 1 stream tokens).
      exclude_bos: leave BOS positions out of the activations (their norm dwarfs the rest).
      scaling_factor: multiply activations by this (SAELens's expected_average_only_in).
    """

    def __init__(self, params, cfg: Config, hook_names: Union[str, Sequence[str]], tokens,
                 context_size: int = 128, store_batch_size_prompts: int = 32,
                 n_batches_in_buffer: int = 20, train_batch_size_tokens: int = 4096,
                 prepend_bos: bool = True, bos_token_id: Optional[int] = None,
                 exclude_bos: bool = True, scaling_factor: Optional[float] = None,
                 seed: int = 0, cache_dir=None):
        names = hook_catalogue(cfg)
        hooks = [hook_names] if isinstance(hook_names, str) else list(hook_names)
        self.hook_names = tuple(names.one(h, "ActivationStore") for h in hooks)
        layers = [split_name(n)[1] for n in self.hook_names]
        self.stop = None if any(l is None for l in layers) else max(layers) + 1
        if prepend_bos and bos_token_id is None:
            raise ValueError("prepend_bos=True needs bos_token_id= (the tokenizer's BOS id)")
        self.params, self.cfg = params, cfg
        self.tokens = np.asarray(tokens, np.int32)
        self.windows = context_windows(self.tokens, context_size - int(prepend_bos))
        self.prepend_bos, self.bos, self.exclude_bos = prepend_bos, bos_token_id, exclude_bos
        self.prompts, self.n_buffer = store_batch_size_prompts, n_batches_in_buffer
        self.batch_tokens, self.scale = train_batch_size_tokens, scaling_factor
        self.rng = np.random.default_rng(seed)
        self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
        self.next_window = 0
        self.buffers_made = 0

    def _prompts(self) -> np.ndarray:
        idx = (self.next_window + np.arange(self.prompts)) % len(self.windows)
        self.next_window = int(idx[-1] + 1) % len(self.windows)
        w = self.windows[idx]
        if self.prepend_bos:
            w = np.concatenate([np.full((len(w), 1), self.bos, np.int32), w], axis=1)
        return w

    def _buffer(self) -> np.ndarray:
        """[n_hooks, n_tokens, d_in] activations of the next n_batches_in_buffer forwards."""
        path = None if self.cache_dir is None else self.cache_dir / f"buffer-{self.buffers_made:06d}.npy"
        self.buffers_made += 1
        if path is not None and path.is_file():
            self.next_window = (self.next_window + self.n_buffer * self.prompts) % len(self.windows)
            return np.load(path)
        parts = []
        for _ in range(self.n_buffer):
            a = _acts(self.params, jnp.asarray(self._prompts()), self.cfg, self.hook_names, self.stop)
            if self.prepend_bos and self.exclude_bos:
                a = a[:, :, 1:]
            parts.append(np.asarray(a).reshape(a.shape[0], -1, a.shape[-1]))
        buf = np.concatenate(parts, axis=1)
        if self.scale is not None:
            buf = buf * np.float32(self.scale)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, buf)
            os.replace(tmp, path)
        return buf

    def batches(self, n: Optional[int] = None) -> Iterator[jax.Array]:
        """Yield `n` shuffled batches (forever when None): [tokens, d_in], or
        [n_hooks, tokens, d_in] for several hooks."""
        served = 0
        while n is None or served < n:
            buf = self._buffer()
            order = self.rng.permutation(buf.shape[1])
            for start in range(0, len(order) - self.batch_tokens + 1, self.batch_tokens):
                b = jnp.asarray(buf[:, order[start:start + self.batch_tokens]])
                yield b[0] if len(self.hook_names) == 1 else b
                served += 1
                if n is not None and served >= n:
                    return

    def estimated_norm_scaling_factor(self, n_batches: int = 4) -> float:
        """sqrt(d_in) / mean ||x||: SAELens's factor for normalize_activations=
        'expected_average_only_in'."""
        norms = [float(jnp.linalg.norm(b, axis=-1).mean()) for b in self.batches(n_batches)]
        return float(np.sqrt(hook_width(self.params, self.cfg, self.hook_names[0])) / np.mean(norms))
