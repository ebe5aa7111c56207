"""Generation as one compiled program: a prefill forward, then a `lax.while_loop` that feeds each
chosen token back through the forward against a preallocated `KeyValueCache`.

    tokens = jtlens.generate(params, cfg, prompt, 20, key=jax.random.PRNGKey(0))

Hooks act at every forward of the loop (the prefill and each decode step), so
`Hooks(add={"blocks.3.hook_resid_pre": v})` steers the whole completion. The loop has no Python
per token: it is jitted once per (shapes, cfg, options), and stops when every row has produced an
end-of-sequence token or `max_new_tokens` are done.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jtlens.experiments import sampling
from jtlens.core import tokens as T
from jtlens.core.config import Config
from jtlens.core import decode_layout as layout
from jtlens.core.hooks import Hooks
from jtlens.core.kv_cache import KeyValueCache, check_decoder
from jtlens.core.checks import check_tokens, context_name
from jtlens.core.compilation_cache import quick_jit
from jtlens.core.forward import forward, forward_with_cache, forward_with_kv

# The decode layout saves about 20 ms a step (GPT-2-small, batch 1, 2 cores: 43 -> 22-26 ms) and
# costs seconds of compiling (SmolLM2, 20 tokens, loaded machine: first call 28 s against 6.8 s,
# later calls 1.3 s against 2.8 s); it pays off past a few hundred steps.
DECODE_LAYOUT_MIN_STEPS = 256


@dataclasses.dataclass(frozen=True)
class _Options:
    """Everything static about one generation (part of the jit cache key)."""

    max_new_tokens: int
    stop_tokens: tuple
    do_sample: bool
    top_k: Optional[int]
    top_p: Optional[float]
    temperature: float
    freq_penalty: float
    use_past_kv_cache: bool
    verbose: bool
    decode_layout: bool


_progress: dict = {"bar": None}  # the open progress bar; the compiled loop reports to it


def _tick(n):
    if _progress["bar"] is not None:
        _progress["bar"].update(int(n))


def _no_capture(hooks: Optional[Hooks]) -> Optional[Hooks]:
    """The interventions of `hooks` without its capture (the loop returns no activations)."""
    if hooks is None or not hooks.capture:
        return hooks
    return Hooks(patch=hooks.patch, add=hooks.add, fns=hooks.fns)


def _left_padding_mask(attention_mask, tokens) -> np.ndarray:
    """The [batch, pos] 0/1 mask, checked to be left padding (generation appends on the right)."""
    if attention_mask is None:
        return np.ones(tokens.shape, np.int32)
    mask = np.asarray(attention_mask).astype(np.int32)
    if mask.shape != tuple(tokens.shape):
        raise ValueError(f"attention_mask has shape {mask.shape}; it must match the tokens' "
                         f"[batch, pos] = {tuple(tokens.shape)}")
    if (np.diff(mask, axis=1) < 0).any():
        raise ValueError("attention_mask has padding after a real token; generate appends "
                         "tokens on the right, so pad prompts on the left (padding_side='left')")
    if not mask[:, -1].all():
        raise ValueError("a prompt has no real token (its attention_mask row is all 0)")
    return mask


def generate(params, cfg: Config, tokens, max_new_tokens: int, *, key: Optional[jax.Array] = None,
             hooks: Optional[Hooks] = None, attention_mask=None, stop_at_eos: bool = True,
             eos_token_id: Union[int, Sequence[int], None] = None, do_sample: bool = True,
             top_k: Optional[int] = None, top_p: Optional[float] = None, temperature: float = 1.0,
             freq_penalty: float = 0.0, use_past_kv_cache: bool = True, verbose: bool = False,
             decode_layout: Optional[bool] = None):
    """Extend each prompt by up to `max_new_tokens` tokens.

    Args:
      tokens: int [batch, pos] prompts; left-padded when of different lengths, with
        `attention_mask` [batch, pos] (1 = real token) saying where the padding is.
      key: a PRNG key; required when sampling. The same key gives the same tokens.
      hooks: interventions applied at every forward of the loop (values must broadcast to each
        step's activation: [batch, pos, ...] at the prefill, [batch, 1, ...] per decode step, so
        use per-feature values such as a [d_model] steering vector). With `hooks.capture`, the
        selected activations of the whole generated sequence come back in one ActivationCache.
      stop_at_eos / eos_token_id: a row stops at any of the `eos_token_id`s (one id or several)
        and is padded with the first of them while other rows go on; the loop ends when every
        row has stopped.
      do_sample, top_k, top_p, temperature, freq_penalty: as TransformerLens's `generate` (see
        `jtlens.sampling`); greedy when do_sample is False or temperature is 0. The frequency
        penalty counts the real tokens of each row (not its padding).
      use_past_kv_cache: False reruns the full sequence at every step (a reference; same tokens).
      verbose: show a progress bar (reported from inside the compiled loop).
      decode_layout: run the decode steps on a copy of the weights laid out for them
        (`jtlens.decode_layout`) with a per-layer cache: 1.3-1.9x faster per step on CPU
        (GPT-2-small shape, batch 8 to 1), for one extra copy of the matrices while generating,
        but its unrolled layers compile several times slower (SmolLM2, 20 tokens: 28 s first
        call against 6.8 s, under load). None (default): on when the params live on CPU and
        at least `DECODE_LAYOUT_MIN_STEPS` tokens are asked for, where the faster steps repay it.
    Returns: tokens [batch, pos + n_new] (prompt then new tokens; n_new = max_new_tokens unless
      every row stopped early), or (tokens, ActivationCache) when `hooks.capture` is set.
    """
    check_decoder(cfg)
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    check_tokens(tokens, cfg)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    total = tokens.shape[1] + int(max_new_tokens)
    limit = min(cfg.n_ctx, cfg.position_limit or cfg.n_ctx)
    if total > limit:
        raise ValueError(f"the prompt ({tokens.shape[1]} tokens) plus max_new_tokens="
                         f"{max_new_tokens} is {total} tokens, beyond the model's context "
                         f"{'n_ctx' if limit == cfg.n_ctx else context_name(cfg)}={limit}; "
                         f"shorten the prompt or ask for fewer tokens")
    sampling.check_options(do_sample, top_k, top_p, temperature, freq_penalty)
    stop_tokens: tuple = ()
    if stop_at_eos:
        if eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id (the id(s) that end a sequence); "
                             "pass eos_token_id=... or stop_at_eos=False")
        stop_tokens = tuple(int(t) for t in np.atleast_1d(eos_token_id))
    sampled = do_sample and temperature > 0
    if sampled and key is None:
        raise ValueError("sampling needs a PRNG key: pass key=jax.random.PRNGKey(seed) "
                         "(or do_sample=False for greedy decoding)")
    mask = _left_padding_mask(attention_mask, tokens)
    options = _Options(int(max_new_tokens), stop_tokens, bool(do_sample), top_k,
                       None if top_p is None else float(top_p), float(temperature),
                       float(freq_penalty), bool(use_past_kv_cache), bool(verbose),
                       (_on_cpu(params) and max_new_tokens >= DECODE_LAYOUT_MIN_STEPS)
                       if decode_layout is None else bool(decode_layout))
    key = jax.random.PRNGKey(0) if key is None else key
    out, n_new = tokens, 0
    if max_new_tokens:
        bar = tqdm(total=max_new_tokens, disable=not verbose, desc="generate")
        _progress["bar"] = bar
        try:
            buffer, n_new = _generate(params, tokens, jnp.asarray(mask), key, _no_capture(hooks),
                                      cfg=cfg, options=options)
            n_new = int(n_new)
        finally:
            _progress["bar"] = None
            bar.close()
        out = buffer[:, : tokens.shape[1] + n_new]
    if hooks is None or not hooks.capture:
        return out
    full_mask = jnp.concatenate([jnp.asarray(mask), jnp.ones((out.shape[0], n_new), jnp.int32)], 1)
    _, cache = _capture(params, out, full_mask, hooks, cfg=cfg)
    return out, cache


def _on_cpu(params) -> bool:
    leaf = jax.tree_util.tree_leaves(params)[0]
    devices = leaf.devices() if isinstance(leaf, jax.Array) else jax.devices()[:1]
    return all(d.platform == "cpu" for d in devices)


@functools.partial(quick_jit, static_argnames=("cfg",))
def _capture(params, tokens, mask, hooks, cfg):
    return forward_with_cache(params, tokens, cfg, hooks, return_type=None, attention_mask=mask)


@functools.partial(quick_jit, static_argnames=("cfg", "options"))
def _generate(params, prompt, prompt_mask, key, hooks, cfg: Config, options: _Options):
    """-> (tokens [batch, pos + max_new_tokens], number of new tokens actually produced)."""
    o = options
    batch, n_prompt = prompt.shape
    total = n_prompt + o.max_new_tokens
    buffer = jnp.zeros((batch, total), jnp.int32).at[:, :n_prompt].set(prompt.astype(jnp.int32))
    mask = jnp.ones((batch, total), jnp.int32).at[:, :n_prompt].set(prompt_mask)
    stops = jnp.asarray(o.stop_tokens or (0,), jnp.int32)
    counts = None
    if o.freq_penalty:
        counts = jnp.zeros((batch, cfg.d_vocab_out), jnp.float32)
        counts = counts.at[jnp.arange(batch)[:, None], prompt].add(prompt_mask.astype(jnp.float32))

    def choose(logits, key, finished, counts):
        tok = sampling.next_token(logits, key, do_sample=o.do_sample, temperature=o.temperature,
                                  top_k=o.top_k, top_p=o.top_p, freq_penalty=o.freq_penalty,
                                  counts=counts)
        if o.stop_tokens:
            tok = jnp.where(finished, stops[0], tok)
            finished = finished | jnp.isin(tok, stops)
        if counts is not None:
            counts = counts.at[jnp.arange(batch), tok].add(1.0)
        if o.verbose:
            jax.debug.callback(_tick, 1)
        return tok, finished, counts

    if o.use_past_kv_cache:
        kv = KeyValueCache.init(cfg, batch, total)
        logits, kv = forward_with_kv(params, prompt, cfg, kv, hooks, attention_mask=prompt_mask)
        kv = kv.per_layer() if o.decode_layout else kv
    else:
        kv = None
        logits = forward(params, buffer, cfg, hooks, attention_mask=mask)[:, :n_prompt]
    key, sub = jax.random.split(key)
    tok, finished, counts = choose(logits[:, -1], sub, jnp.zeros(batch, bool), counts)
    buffer = buffer.at[:, n_prompt].set(tok)
    # XLA's CPU kernels take one row per step fastest against [in, out], several against [out, in].
    step_params = layout.decode_layout(params, input_last=batch > 1) if o.decode_layout else params

    def body(state):
        i, buffer, kv, finished, counts, key = state  # i: tokens produced so far
        prev = jax.lax.dynamic_index_in_dim(buffer, n_prompt + i - 1, axis=1)  # [batch, 1]
        if o.use_past_kv_cache:
            logits, kv = forward_with_kv(step_params, prev, cfg, kv, hooks,
                                         attention_mask=jnp.ones_like(prev))
            last = logits[:, -1]
        else:
            logits = forward(step_params, buffer, cfg, hooks, attention_mask=mask)
            last = jax.lax.dynamic_index_in_dim(logits, n_prompt + i - 1, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        tok, finished, counts = choose(last, sub, finished, counts)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, tok[:, None], n_prompt + i, axis=1)
        return i + 1, buffer, kv, finished, counts, key

    def more(state):
        i, finished = state[0], state[3]
        return (i < o.max_new_tokens) & ~(bool(o.stop_tokens) & finished.all())

    state = (jnp.int32(1), buffer, kv, finished, counts, key)
    i, buffer, *_ = jax.lax.while_loop(more, body, state)
    return buffer, i


def model_generate(model, input, max_new_tokens: int, *, stop_at_eos: bool, eos_token_id,
                   prepend_bos, padding_side, return_type: str, key, attention_mask,
                   hooks: Optional[Hooks], **options):
    """`HookedTransformer.generate`: text or tokens in, text or tokens out (see there)."""
    check_decoder(model.cfg)
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type={return_type!r}; use 'input', 'str' or 'tokens' "
                         f"(jtlens generates from text or token ids, not embeddings)")
    text = T.maybe_strings(input)
    if text is None:
        tokens = jnp.asarray(input)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"generate takes a string, a list of strings or int tokens [batch, "
                             f"pos]; got an array of shape {tuple(tokens.shape)} and dtype "
                             f"{tokens.dtype}")
        mask = attention_mask
    else:
        # A batch of prompts is padded on the left, so every row's last token is its newest.
        side = "left" if isinstance(text, list) and len(text) > 1 else padding_side
        tokens, mask = model.to_tokens(text, prepend_bos=prepend_bos, padding_side=side,
                                       return_mask=True)
    if stop_at_eos and eos_token_id is None:
        if model.tokenizer is None or model.tokenizer.eos_token_id is None:
            raise ValueError("stop_at_eos needs an end-of-sequence id: pass eos_token_id=... "
                             "(this model's tokenizer has none) or stop_at_eos=False")
        eos_token_id = model.tokenizer.eos_token_id
    out = generate(model.params, model.cfg, tokens, max_new_tokens, key=key, hooks=hooks,
                   attention_mask=mask, stop_at_eos=stop_at_eos, eos_token_id=eos_token_id,
                   **options)
    out, cache = out if isinstance(out, tuple) else (out, None)
    if return_type == "str" or (return_type == "input" and text is not None):
        n_pad = 0 if mask is None else np.asarray(mask).shape[1] - np.asarray(mask).sum(1)
        rows = [model.tokenizer.decode(np.asarray(row)[int(p):].tolist(), skip_special_tokens=True)
                for row, p in zip(out, np.broadcast_to(n_pad, (out.shape[0],)))]
        out = rows[0] if len(rows) == 1 else rows
    return out if cache is None else (out, cache.with_model(model))
