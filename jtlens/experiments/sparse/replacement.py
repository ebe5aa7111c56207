"""The replacement model: the forward with every MLP replaced by its transcoder plus an error
term, attention patterns and norm scales frozen at their values on the prompt.

    frozen = freeze(params, cfg, tc, tokens)          # one prompt [pos]
    logits, mlp_in, acts = run_replacement(params, cfg, tc, frozen)
    # logits == the model's logits on the prompt (the error term makes it exact)

Frozen patterns and scales are `patch` entries of the hooks pytree (stop_gradient-ed), and the
MLP outputs are a hook function at `blocks.L.<output_hook>`, so this is the one jtlens forward.
Two modes:
- given `acts` [L, pos, d_tc] (and `errors`, `embed`), the MLP outputs are decode(acts) +
  skip(mlp input) + errors: with patterns and scales frozen, everything from these node values
  to the logits and to the transcoders' inputs is linear (the local replacement model whose
  direct effects are an attribution graph's edges);
- without `acts`, each layer's features are recomputed from its MLP input (then `edit(layer,
  acts)`), so an intervention propagates through later features (`freeze=False` also recomputes
  patterns and scales).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.core.forward import forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.core.hooks import Hooks
from jtlens.experiments.sparse.transcoder import Transcoders

Edit = Callable[[int, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Frozen:
    """One prompt's run of the model, as the replacement model holds it fixed.

    tokens [pos]; patched: hook name -> value (attention patterns and every norm's hook_scale,
    `blocks.*` names layer-stacked); embed [pos, d_model] (hook_embed); mlp_in [L, pos, d_in] /
    mlp_out [L, pos, d_out] at the transcoders' hooks; logits [pos, d_vocab].
    """

    tokens: jax.Array
    patched: dict
    embed: jax.Array
    mlp_in: jax.Array
    mlp_out: jax.Array
    logits: jax.Array


jax.tree_util.register_dataclass(
    Frozen, data_fields=("tokens", "patched", "embed", "mlp_in", "mlp_out", "logits"), meta_fields=())


def is_held(template: str) -> bool:
    """Whether the replacement model holds this activation at its value on the prompt
    (attention patterns and norm scales)."""
    return template.endswith("hook_scale") or template == "attn.hook_pattern"


def check_hooks(cfg: Config, tc: Transcoders):
    """The transcoders fit the model: widths, layers, and MLP hooks it has."""
    t = tc.cfg
    if t.n_layers != cfg.n_layers:
        raise ValueError(f"{t.n_layers} transcoder layers for a {cfg.n_layers}-layer model; give "
                         f"one per layer")
    if cfg.attn_only or cfg.parallel_attn_mlp or cfg.post_ln:
        raise ValueError("the replacement model needs a pre-norm model with sequential MLPs "
                         "(not attn_only, parallel_attn_mlp or post_ln)")
    if t.output_hook == "hook_mlp_out" and t.d_out != cfg.d_model:
        raise ValueError(f"the transcoders write d_out={t.d_out}; hook_mlp_out has d_model="
                         f"{cfg.d_model}")
    names = hook_catalogue(cfg).names()
    for w in (t.input_hook, t.output_hook):
        if f"blocks.0.{w}" not in names:
            raise ValueError(f"this model has no hook blocks.L.{w} for the transcoders; use a hook "
                             f"it has (e.g. ln2.hook_normalized / hook_mlp_out)")


def freeze(params, cfg: Config, tc: Transcoders, tokens) -> Frozen:
    """Run the model once on `tokens` [pos] (or [1, pos]) and keep what the replacement model
    holds fixed."""
    check_hooks(cfg, tc)
    t = tc.cfg
    return _freeze(params, jnp.asarray(tokens).reshape(1, -1), cfg, t.input_hook, t.output_hook)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _freeze(params, tokens, cfg: Config, input_hook: str, output_hook: str) -> Frozen:
    wanted = (input_hook, output_hook, "attn.hook_pattern")
    capture = tuple(n for n in hook_catalogue(cfg).names() if n.endswith("hook_scale")
                    or n == "hook_embed" or any(n.endswith(f".{w}") for w in wanted))
    logits, cache = forward_with_cache(params, tokens, cfg, Hooks(capture=capture))
    patched = {f"blocks.*.{k}": v for k, v in cache.stacked.items() if is_held(k)}
    patched.update({k: v for k, v in cache.outer.items() if is_held(k)})
    return Frozen(tokens[0], patched, cache.outer["hook_embed"][0],
                  cache.stacked[input_hook][:, 0], cache.stacked[output_hook][:, 0], logits[0])


def true_nodes(tc: Transcoders, frozen: Frozen):
    """(acts [L, pos, d_tc], errors [L, pos, d_out]) on the prompt: the transcoders' features and
    what they miss of each MLP output (mlp_out - decode(acts) - skip)."""
    acts = tc.encode(frozen.mlp_in)
    return acts, frozen.mlp_out - tc.decode(acts, frozen.mlp_in)


def run_replacement(params, cfg: Config, tc: Transcoders, frozen: Frozen, *, acts=None,
                    errors=None, embed=None, edit: Optional[Edit] = None, freeze: bool = True):
    """The replacement model on the frozen prompt -> (logits [pos, d_vocab], MLP inputs
    [L, pos, d_in], feature activations used [L, pos, d_tc]).

    acts / errors / embed: node values (default: their values on the prompt; `acts` may also
    be a list of per-layer [pos, d_tc] arrays); with `acts` the
    features are inputs (linear mode), without them they are recomputed per layer and passed
    through `edit(layer, acts [pos, d_tc]) -> acts`. freeze: hold patterns and norm scales.
    """
    check_hooks(cfg, tc)
    t = tc.cfg
    errors = true_nodes(tc, frozen)[1] if errors is None else errors
    embed = frozen.embed if embed is None else embed
    L = cfg.n_layers
    seen: dict = {}              # layer -> its MLP input, from the input hook to the output hook
    used: list = [None] * L      # layer -> the feature activations it decoded
    pending = [0.0] * L          # a CLT's writes into later layers

    def read_input(x, hp):
        seen[hp.layer()] = x[0]
        return x

    def write_output(out, hp):
        layer = hp.layer()
        x = seen.pop(layer)
        if acts is not None:
            a = acts[layer]
        else:
            a = tc.encode_at(x, layer)
            a = a if edit is None else edit(layer, a)
        used[layer] = a
        w = tc.write_at(a, layer)
        if t.cross_layer:
            for later in range(layer, L):
                pending[later] = pending[later] + w[later]
            w = pending[layer]
        new = w + tc.params["b_dec"][layer] + errors[layer]
        if t.skip:
            new = new + x @ tc.params["W_skip"][layer].T
        return new[None].astype(out.dtype)

    held = {k: (jax.lax.stop_gradient(v), None) for k, v in frozen.patched.items()} if freeze else {}
    patch = {"hook_embed": (embed[None], None), **held}
    hooks = Hooks(capture=f"blocks.*.{t.input_hook}", patch=patch,
                  fns=((f"blocks.*.{t.input_hook}", read_input),
                       (f"blocks.*.{t.output_hook}", write_output)))
    out, cache = forward_with_cache(params, frozen.tokens[None], cfg, hooks, scan=False)
    return out[0], cache.stacked[t.input_hook][:, 0], jnp.stack(used)
