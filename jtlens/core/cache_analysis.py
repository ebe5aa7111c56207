"""Residual-stream analyses of an ActivationCache, with TransformerLens's names and numbers.

`CacheAnalysis` holds them as methods; `ActivationCache` inherits them, so
`cache.accumulated_resid(...)` reads like TransformerLens. Those that need weights read the
params attached to the cache (`model.run_with_cache` attaches them; `cache.with_model(model)`
does it by hand). Shapes: a "stack" is `[components, *batch_and_pos, d_model]`.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

from jtlens.core import components as C
from jtlens.core import tokens as T
from jtlens.core.slice import Slice

_NORMS = ("LN", "LNPre", "RMS", "RMSPre")


# ----------------------------------------------------------------------------- model-side pieces
def tokens_to_residual_directions(W_U, tokens):
    """Unembedding columns of `tokens`: int -> [d_model], [pos] -> [pos, d_model], [b, p] -> [b, p, d_model]."""
    tokens = jnp.asarray(tokens)
    return jnp.moveaxis(W_U[:, tokens], 0, -1)


def accumulated_bias(params: dict, layer: int, mlp_input: bool = False,
                     include_mlp_biases: bool = True):
    """Sum of the output biases (attn b_O, mlp b_out) written before layer `layer` -> [d_model]."""
    blocks = params["blocks"]
    total = blocks["attn"]["b_O"][:layer].sum(0)
    if include_mlp_biases and "mlp" in blocks:
        total = total + blocks["mlp"]["b_out"][:layer].sum(0)
    if mlp_input:
        if layer >= blocks["attn"]["b_O"].shape[0]:
            raise ValueError(f"accumulated_bias: mlp_input=True needs layer < n_layers, got {layer}")
        total = total + blocks["attn"]["b_O"][layer]
    return total


def _stack(items):
    return jnp.stack(items, axis=0)


def _as_2d(project):
    if project is None:
        return None, False
    project = jnp.asarray(project)
    return (project[:, None], True) if project.ndim == 1 else (project, False)


# ----------------------------------------------------------------------------- the analyses
class CacheAnalysis:
    """TransformerLens's ActivationCache analyses, as methods of `ActivationCache`."""

    def _weights(self) -> dict:
        if self.params is None:
            raise ValueError("this analysis reads the model's weights, but the cache has none: "
                             "use model.run_with_cache(...) or cache.with_model(model)")
        return self.params

    def _token_ids(self, tokens):
        if isinstance(tokens, str):
            return T.to_single_token(self.tokenizer, self.cfg, tokens)
        return jnp.asarray(tokens)

    def _layer(self, layer) -> int:
        return self.cfg.n_layers if layer is None or layer == -1 else layer

    def apply_ln_to_stack(self, residual_stack, layer: Optional[int] = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False):
        """Scale a stack by the cached LN/RMS scale feeding `layer` (ln_final for n_layers), after
        centring for LayerNorm; with `recompute_ln` (at the final layer) apply ln_final afresh to each
        component. `[components, *batch_and_pos, d_model]` -> same shape."""
        cfg = self.cfg
        if cfg.normalization_type not in _NORMS:
            return residual_stack
        pos_slice, batch_slice = Slice(pos_slice), Slice(batch_slice)
        layer = self._layer(layer)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == cfg.n_layers:
            params = self._weights()
            return C.normalize(residual_stack, params.get("ln_final"), cfg.final_norm_type, cfg.eps,
                               lambda name, act: act)
        if cfg.normalization_type.startswith("LN"):
            residual_stack = residual_stack - residual_stack.mean(-1, keepdims=True)
        return residual_stack / self._ln_scale(layer, mlp_input, pos_slice, batch_slice)

    def _ln_scale(self, layer, mlp_input, pos_slice: Slice, batch_slice: Slice):
        key = ("ln_final.hook_scale" if layer == self.cfg.n_layers
               else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale")
        if key not in self:
            raise KeyError(f"apply_ln needs the cached LN scale {key!r}; capture it "
                           f"(run_with_cache without a names_filter, or include '*hook_scale')")
        scale = pos_slice.apply(self[key], dim=-2)
        return batch_slice.apply(scale) if self.has_batch_dim else scale

    def accumulated_resid(self, layer: Optional[int] = None, incl_mid: bool = False,
                          apply_ln: bool = False, pos_slice=None, mlp_input: bool = False,
                          return_labels: bool = False):
        """The residual stream entering each layer up to `layer` (logit lens):
        `[layers_covered, *batch_and_pos, d_model]`, labels like "0_pre", "0_mid", "final_post"."""
        pos_slice = Slice(pos_slice)
        n = self.cfg.n_layers
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self["resid_post", n - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = _stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input,
                                           has_batch_dim=self.has_batch_dim, recompute_ln=layer == n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: Optional[int] = None, mlp_input: bool = False,
                        mode: str = "all", apply_ln: bool = False, pos_slice=None,
                        incl_embeds: bool = True, return_labels: bool = False):
        """The residual stream into `layer` split into embed, pos_embed and each attn/mlp output:
        `[components, *batch_and_pos, d_model]`; `mode` is "all", "attn" or "mlp"."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"decompose_resid: mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        pos_slice = Slice(pos_slice)
        layer = self._layer(layer)
        with_attn, with_mlp = mode != "mlp", mode != "attn" and not self.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
                if name in self:
                    parts.append(self[name])
                    labels.append(label)
        for l in range(layer):
            if with_attn:
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if with_mlp:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and with_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = _stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def head_results(self):
        """Each head's write into the residual stream, `[n_layers, *batch_and_pos, n_heads, d_model]`,
        from the cached hook_result or, when absent, computed from hook_z and W_O."""
        if "blocks.*.attn.hook_result" in self:
            return self["blocks.*.attn.hook_result"]
        W_O = self._weights()["blocks"]["attn"]["W_O"]  # [L, H, Dh, D]
        z = self["blocks.*.attn.hook_z"]  # [L, *batch_and_pos, H, Dh]
        return jnp.einsum("l...hd,lhdm->l...hm", z, W_O)

    def compute_head_results(self):
        """Put `blocks.L.attn.hook_result` (per-head outputs) into the self if it is missing."""
        if "blocks.*.attn.hook_result" in self:
            return self
        self.stacked["attn.hook_result"] = self.head_results()
        self.layers = self.layers + (("attn.hook_result", tuple(range(self.cfg.n_layers))),)
        return self

    def stack_head_results(self, layer: int = -1, return_labels: bool = False,
                           incl_remainder: bool = False, pos_slice=None, apply_ln: bool = False):
        """Every head's output before `layer`: `[layer * n_heads (+1), *batch_and_pos, d_model]`,
        labels "L{l}H{h}" (and "remainder" = resid_post[layer-1] minus their sum)."""
        pos_slice = Slice(pos_slice)
        layer = self._layer(layer)
        H = self.cfg.n_heads
        labels = [f"L{l}H{h}" for l in range(layer) for h in range(H)]
        per_head = pos_slice.apply(self.head_results()[:layer], dim=-3)  # [l, *bp, H, D]
        stack = jnp.moveaxis(per_head, -2, 1).reshape(-1, *per_head.shape[1:-2], per_head.shape[-1])
        if incl_remainder:
            resid = pos_slice.apply(self["resid_post", layer - 1], dim=-2)
            stack = jnp.concatenate([stack, (resid - stack.sum(0))[None]], axis=0)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1,
                         sublayer_type: Optional[str] = None):
        """One activation at every layer before `layer`: `[layers, ...]`."""
        layer = self._layer(layer)
        return _stack([self[activation_name, l, sublayer_type] if sublayer_type else
                       self[activation_name, l] for l in range(layer)])

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None,
                           project_output_onto=None):
        """Each neuron's write into the residual stream at `layer`: `[*batch_and_pos, neurons, d_model]`
        (or `[..., neurons, k]` / `[..., neurons]` projected onto a [d_model, k] / [d_model] basis)."""
        neuron_slice, pos_slice = Slice(neuron_slice), Slice(pos_slice)
        acts = neuron_slice.apply(pos_slice.apply(self["post", layer], dim=-2), dim=-1)
        W_out = neuron_slice.apply(self._weights()["blocks"]["mlp"]["W_out"][layer], dim=0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto
        return acts * projected if projected.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(self, layer: int, pos_slice=None, neuron_slice=None,
                             return_labels: bool = False, incl_remainder: bool = False,
                             apply_ln: bool = False, project_output_onto=None):
        """Every neuron's output before `layer`: `[layer * neurons (+1), *batch_and_pos, d_model|k]`,
        labels "L{l}N{n}" (and "remainder")."""
        layer = self._layer(layer)
        neuron_slice, pos_slice = Slice(neuron_slice), Slice(pos_slice)
        project, squeeze = _as_2d(project_output_onto)
        ids = np.atleast_1d(neuron_slice.apply(np.arange(self.cfg.d_mlp)))
        labels = [f"L{l}N{n}" for l in range(layer) for n in ids]
        ln_first = apply_ln and project is not None
        if ln_first:
            per = [self._ln_projected_neurons(l, layer, neuron_slice, pos_slice, project)
                   for l in range(layer)]
        else:
            per = [self.get_neuron_results(l, neuron_slice, pos_slice, project) for l in range(layer)]
        if per:
            stack = jnp.moveaxis(jnp.concatenate(per, axis=-2), -2, 0)
        else:
            shape = pos_slice.apply(self["hook_embed"], dim=-2).shape
            stack = jnp.zeros((0, *shape[:-1], shape[-1] if project is None else project.shape[-1]))
        if incl_remainder:
            resid = pos_slice.apply(self["resid_post", layer - 1], dim=-2)
            if ln_first:
                resid = self.apply_ln_to_stack(resid[None], layer, pos_slice=pos_slice)[0]
            if project is not None:
                resid = resid @ project
            stack = jnp.concatenate([stack, (resid - stack.sum(0))[None]], axis=0)
            labels.append("remainder")
        if apply_ln and not ln_first:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        if squeeze:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    def _ln_projected_neurons(self, l, layer, neuron_slice: Slice, pos_slice: Slice, project):
        """Layer l's neuron outputs, normalised by the scale feeding `layer`, then projected onto
        `project` [d_model, k] -> [*batch_and_pos, neurons, k], without the [neurons, d_model]
        intermediate: LayerNorm's centring of a * W_out[n] projects to a * (W_out[n] @ P -
        mean(W_out[n]) * sum(P))."""
        W_out = neuron_slice.apply(self._weights()["blocks"]["mlp"]["W_out"][l], dim=0)
        form = W_out @ project
        if self.cfg.normalization_type in ("LN", "LNPre"):
            form = form - W_out.mean(-1)[:, None] * project.sum(0)[None, :]
        acts = neuron_slice.apply(pos_slice.apply(self["post", l], dim=-2), dim=-1)
        if self.cfg.normalization_type in _NORMS:
            acts = acts / self._ln_scale(layer, False, pos_slice, Slice(None))
        return acts[..., None] * form

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True):
        """Each component's direct contribution to the logit of `tokens` (minus `incorrect_tokens`):
        `[components, *batch_and_pos]`, after scaling by the final LN scale."""
        W_U = self._weights()["unembed"]["W_U"]
        correct = self._token_ids(tokens)
        directions = tokens_to_residual_directions(W_U, correct)
        if incorrect_tokens is not None:
            wrong = self._token_ids(incorrect_tokens)
            if jnp.shape(correct) != jnp.shape(wrong):
                raise ValueError(f"logit_attrs: tokens and incorrect_tokens must have the same shape, "
                                 f"got {jnp.shape(correct)} and {jnp.shape(wrong)}")
            directions = directions - tokens_to_residual_directions(W_U, wrong)
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice,
                                        batch_slice=batch_slice, has_batch_dim=has_batch_dim)
        return (scaled * directions).sum(-1)

    def get_full_resid_decomposition(self, layer: Optional[int] = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False,
                                     pos_slice=None, return_labels: bool = False,
                                     project_output_onto=None):
        """The residual stream into `layer` as a sum of every head, every neuron (or each MLP),
        embed, pos_embed and the accumulated bias: `[components, *batch_and_pos, d_model|k]`."""
        layer = self._layer(layer)
        pos_slice = Slice(pos_slice)
        project, squeeze = _as_2d(project_output_onto)
        ln_first = apply_ln and project is not None

        def finish(stack):
            if ln_first:
                stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
            return stack if project is None else stack @ project

        heads, labels = self.stack_head_results(layer + (1 if mlp_input else 0),
                                                pos_slice=pos_slice, return_labels=True)
        parts = [finish(heads)]
        if not self.cfg.attn_only and layer > 0:
            if expand_neurons:
                neurons, more = self.stack_neuron_results(layer, pos_slice=pos_slice,
                                                          return_labels=True, apply_ln=ln_first,
                                                          project_output_onto=project)
                parts.append(neurons)
            else:
                mlps, more = self.decompose_resid(layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                                  incl_embeds=False, mode="mlp", return_labels=True)
                parts.append(finish(mlps))
            labels = labels + more
        for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
            if name in self:
                parts.append(finish(pos_slice.apply(self[name], dim=-2)[None]))
                labels.append(label)
        bias = accumulated_bias(self._weights(), layer, mlp_input, include_mlp_biases=expand_neurons)
        bias = jnp.broadcast_to(bias, (1, *heads.shape[1:-1], bias.shape[-1]))
        parts.append(finish(bias))
        labels.append("bias")
        stack = jnp.concatenate(parts, axis=0)
        if apply_ln and not ln_first:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        if squeeze:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack
