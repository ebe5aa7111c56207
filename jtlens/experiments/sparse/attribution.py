"""Attribution graphs (circuit-tracer's method) as batched VJPs of the local replacement model.

    graph = attribute(params, cfg, tc, tokens)          # tokens [pos], one prompt
    graph.edges                                        # [n_features + n_logits, n_sources]
    graph.adjacency                                    # [n_nodes, n_nodes], rows = targets

Nodes, in circuit-tracer's order: active features (layer, pos, feature) (none at the first
`zero_positions` positions, as circuit-tracer leaves out BOS), one error node per (layer, pos),
the input token embeddings, the target logits (the top logits at the last position up to
cumulative probability `desired_logit_prob`, at most `max_n_logits`). A feature node's input is
its pre-activation (less b_enc), a logit node's is its demeaned logit. Only features and logits
have inputs, so a graph keeps their rows (`edges`); error and token rows are zero.

The linear model. Every node gets a coefficient, 1 on the prompt, that scales what it writes: a
feature its activation times its decoder row into its layer's MLP output (a CLT's: into every
later layer's), an error node its error vector, a token its embedding. Attention patterns and
norm scales are `stop_gradient`-ed where the forward computes them, so each node input is
linear in the coefficients and an edge is `A[t, s] = d input_t / d coef_s` (circuit-tracer's
`value_s * d input_t / d value_s`). A block of `batch_size` rows is one `vmap` of a VJP over
one-hot cotangents on the targets' inputs, which the forward reads inside each layer, so no row
holds a [layers, pos, d_model] cotangent. The layers run under `lax.scan`, each rematerialised in
the backward (per layer only the residual stream is kept, never the attention patterns), and a
block stops at its highest target layer (`lax.cond` on a traced bound: the layers above it cost
nothing and nothing recompiles). Feature rows are computed in influence order, sorted by layer
within each update so that blocks stop early.

Memory. Each block's rows are kept with only the columns that can be nonzero (the features and
errors of layers below its targets', and the tokens: `_Rows`), the freed heap is handed back to
the system after each block, and for long prompts the VJP program is compiled with
`lean_compiler_options`. At 1,024 tokens on SmolLM2 (30 layers, 245,520 active features) with
16 rows a block, the graph adds about 0.6 GiB to the model and transcoders.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jtlens.core.config import Config
from jtlens.core.forward import context, forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.core.hooks import Hooks, split_name
from jtlens.core.memory import lean_compiler_options, release_freed_memory
from jtlens.core.pieces import block, embed, local_layers, unembed
from jtlens.core.progress import shown
from jtlens.experiments.patching.planning import chunk_sharding, chunk_splits
from jtlens.experiments.sparse.replacement import check_hooks, is_held
from jtlens.experiments.sparse.transcoder import Transcoders


@dataclasses.dataclass
class AttributionGraph:
    """An attribution graph (numpy). edges[t, s]: direct effect of source s on target t's input;
    targets [features, logits], sources [features, errors (layer-major), tokens]."""

    tokens: np.ndarray               # [pos]
    active_features: np.ndarray      # [n_features, 3] (layer, pos, feature)
    activation_values: np.ndarray    # [n_features]
    logit_tokens: np.ndarray         # [n_logits] vocabulary ids
    logit_probabilities: np.ndarray  # [n_logits]
    edges: np.ndarray                # [n_features + n_logits, n_features + n_layers * pos + pos]
    n_layers: int
    scan: Optional[str] = None

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.active_features)

    @property
    def adjacency(self) -> np.ndarray:
        """The dense [n_nodes, n_nodes] matrix, nodes [features, errors, tokens, logits] (rows of
        errors and tokens, and columns of logits, are zero). n_nodes^2 floats: at 1,024 tokens on
        a 30-layer model that is 4 GB, where `edges` holds 1/100 of it."""
        n_sources = self.edges.shape[1]
        n = n_sources + len(self.logit_tokens)
        dense = np.zeros((n, n), np.float32)
        dense[:self.n_features, :n_sources] = self.edges[:self.n_features]
        dense[n_sources:, :n_sources] = self.edges[self.n_features:]
        return dense

    def node_kinds(self) -> np.ndarray:
        """[n_nodes] 'feature' | 'error' | 'token' | 'logit'."""
        counts = (self.n_features, self.n_layers * self.n_pos, self.n_pos, len(self.logit_tokens))
        return np.repeat(np.array(["feature", "error", "token", "logit"]), counts)

    def locate(self, i: int) -> tuple[str, int, int, int]:
        """Node i as (kind, layer, pos, item): see `locate`."""
        return locate(i, self.active_features, self.n_layers, self.n_pos)


def locate(i: int, active_features, n_layers: int, n_pos: int) -> tuple[str, int, int, int]:
    """Node i of the order [features, errors (layer-major), tokens, logits] as (kind, layer, pos,
    item): ("feature", layer, pos, feature id), ("error", layer, pos, -1), ("token", -1, pos,
    pos), ("logit", n_layers, n_pos - 1, k) for the k-th target logit."""
    i, n_feat = int(i), len(active_features)
    if i < n_feat:
        layer, pos, feature = map(int, active_features[i])
        return "feature", layer, pos, feature
    i -= n_feat
    if i < n_layers * n_pos:
        return ("error", *divmod(i, n_pos), -1)
    i -= n_layers * n_pos
    return ("token", -1, i, i) if i < n_pos else ("logit", n_layers, n_pos - 1, i - n_pos)


def salient_logits(logits: np.ndarray, max_n_logits: int = 10, desired_logit_prob: float = 0.95):
    """(vocab ids, probabilities) of the fewest top logits whose cumulative probability reaches
    `desired_logit_prob`, at most `max_n_logits` (circuit-tracer's rule)."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:max_n_logits]
    cutoff = int(np.searchsorted(np.cumsum(probs[top]), desired_logit_prob)) + 1
    top = top[:cutoff]
    return top, probs[top].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Nodes:
    """The prompt's nodes as the linear model reads them. Every active feature is listed per
    layer (padded to M with activation 0), the non-node ones (first positions) too: their
    coefficients' gradients are simply not read."""

    tokens: jax.Array       # [pos]
    feature: jax.Array      # [L, M] feature ids
    pos: jax.Array          # [L, M] their positions
    value: jax.Array        # [L, M] their activations (0: padding)
    errors: jax.Array       # [L, pos, d_out] what the transcoders miss of each MLP output
    slots: jax.Array        # [n_features] the node features' places in the flattened [L, M]
    error_nodes: jax.Array  # [pos] 1.0 where errors are nodes, 0.0 at the first positions
    logit_dirs: jax.Array   # [d_vocab, n_logits] one-hot minus 1/d_vocab


jax.tree_util.register_dataclass(
    _Nodes, data_fields=[f.name for f in dataclasses.fields(_Nodes)], meta_fields=())


_CHUNK = 256  # features written per step: a VJP row's cotangent is gathered [_CHUNK, d] at a time


def _mlp_out(tc: Transcoders, nodes: _Nodes, coef, layer, x):
    """Layer `layer`'s MLP output [pos, d_out] without its error: the features' writes (each
    activation scaled by its coefficient, coef [L, M]), b_dec and the skip path of x [pos, d_in].

    The writes are added a chunk of features at a time (`lax.scan`), so that the VJP, batched
    over rows, gathers the cotangent at [rows, chunk, d_out] and not [rows, M, d_out] (600 MB
    per layer at 1,024 tokens and 32 rows)."""
    L, d_tc = tc.cfg.n_layers, tc.cfg.d_transcoder
    amount = coef * nodes.value
    W = tc.params["W_dec"]
    if tc.cfg.cross_layer:  # every layer's features; W_dec is zero into earlier layers
        ids = (jnp.arange(L)[:, None] * d_tc + nodes.feature).ravel()
        table = W.reshape(L * d_tc, L, W.shape[-1])
        row = lambda i: table[i, layer]  # noqa: E731
        pos, amount = nodes.pos.ravel(), amount.ravel()
    else:
        ids = layer * d_tc + nodes.feature[layer]
        table = W.reshape(L * d_tc, W.shape[-1])
        row = lambda i: table[i]  # noqa: E731
        pos, amount = nodes.pos[layer], amount[layer]
    chunk = min(_CHUNK, nodes.value.shape[1])  # M is whole chunks when above one

    def add(out, xs):
        i, p, a = xs
        return out.at[p].add(a[:, None] * row(i)), None

    out = jnp.zeros((x.shape[0], W.shape[-1]), W.dtype)
    out, _ = jax.lax.scan(add, out, tuple(v.reshape(-1, chunk) for v in (ids, pos, amount)))
    out = out + tc.params["b_dec"][layer]
    return out + x @ tc.params["W_skip"][layer].T if tc.cfg.skip else out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_prompt(params, cfg: Config, tc: Transcoders, tokens):
    """The model on the prompt [pos]: (MLP inputs [L, pos, d_in], MLP outputs [L, pos, d_out],
    the last position's logits [d_vocab])."""
    t = tc.cfg
    hooks = Hooks(capture=(f"blocks.*.{t.input_hook}", f"blocks.*.{t.output_hook}"))
    resid, cache = forward_with_cache(params, tokens[None], cfg, hooks, stop_at_layer=cfg.n_layers)
    last = unembed(params, resid[:, -1:], context(cfg, None, 1, 1))[0, 0]
    return cache.stacked[t.input_hook][:, 0], cache.stacked[t.output_hook][:, 0], last


@jax.jit
def _layer_acts(tc: Transcoders, x, layer):
    return tc.encode_at(x, layer)


@jax.jit
def _errors(tc: Transcoders, nodes: _Nodes, mlp_in, mlp_out):
    """Each MLP output's error [L, pos, d_out]: what the features, b_dec and skip miss of it."""
    ones = jnp.ones_like(nodes.value)
    return jax.lax.map(lambda l: mlp_out[l] - _mlp_out(tc, nodes, ones, l, mlp_in[l]),
                       jnp.arange(tc.cfg.n_layers))


def _held_hooks(cfg: Config) -> list[str]:
    """The hooks whose activations the replacement model holds (blocks.* names once)."""
    split = map(split_name, hook_catalogue(cfg).names())
    return sorted({t if layer is None else f"blocks.*.{t}" for t, layer in split if is_held(t)})


def _linear(params, cfg: Config, tc: Transcoders, nodes: _Nodes, coef, targets, stop,
            score=None, held=None):
    """The linear replacement model: node coefficients (features [L, M], errors [L, pos],
    tokens [pos]) -> (the inputs of `targets` (layer, pos, feature), each [B] (layer -1: none),
    the demeaned target logits [n_logits]). Layers from `stop` on are skipped (the logits are
    then meaningless). score: (layer, head, query, key), an attention score added to every read
    (attention_attribution's one row); held: {hook: stacked value} patched in (the side of the
    score held fixed)."""
    c_feat, c_err, c_tok = coef
    t_layer, t_pos, t_feat = targets
    enc = tc.params["W_enc"][jnp.maximum(t_layer, 0), :, t_feat]             # [B, d_in]
    seen: dict = {}

    def read(x, hp):
        seen["x"] = x[0]
        return x

    def write(out, hp):
        l = hp.layer()
        new = _mlp_out(tc, nodes, c_feat, l, seen["x"]) + c_err[l][:, None] * nodes.errors[l]
        return new[None].astype(out.dtype)

    hold = lambda x, hp: jax.lax.stop_gradient(x)  # noqa: E731
    fns = [(name, hold) for name in _held_hooks(cfg)]
    fns += [("hook_embed", lambda x, hp: x * c_tok[None, :, None]),
            (f"blocks.*.{tc.cfg.input_hook}", read), (f"blocks.*.{tc.cfg.output_hook}", write)]
    if score is not None:
        fns.append(("blocks.*.attn.hook_attn_scores", lambda x, hp: seen.update(scores=x[0])))
    ctx = context(cfg, Hooks(fns=tuple(fns), patch=held or {}), 1, len(nodes.tokens))
    local = jnp.asarray(local_layers(cfg))

    def layer(resid, p, l):
        resid = block(p, resid, ctx.at(l, local[l], {}))
        x = seen.pop("x")
        reads = jnp.where(t_layer == l, (x[t_pos] * enc).sum(-1), 0.0)
        if score is not None:
            s_layer, head, q, k = score
            reads = reads + jnp.where(l == s_layer, seen.pop("scores")[head, q, k], 0.0)
        return resid, reads

    @jax.checkpoint
    def body(resid, xs):
        p, l = xs
        return jax.lax.cond(l < stop, lambda r: layer(r, p, l),
                            lambda r: (r, jnp.zeros(t_layer.shape, r.dtype)), resid)

    resid = embed(params, nodes.tokens[None], ctx)
    resid, reads = jax.lax.scan(body, resid, (params["blocks"], jnp.arange(cfg.n_layers)))
    return reads.sum(0), unembed(params, resid[:, -1:], ctx)[0, 0] @ nodes.logit_dirs


def _rows(params, cfg: Config, tc: Transcoders, nodes: _Nodes, targets, logit_ids, stop,
          sharding=None):
    """Adjacency rows [B, n_sources] of B targets: features (targets [3, B], layer -1 where the
    row is not one) or logits (logit_ids [B], -1 where not; these need stop = n_layers). One
    VJP, vmapped over one-hot cotangents; features and logits share the compiled program.
    sharding: a NamedSharding of the rows' axis, which splits the backward over its devices."""
    L, M = nodes.value.shape
    P = len(nodes.tokens)
    coef = (jnp.ones((L, M)), jnp.ones((L, P)), jnp.ones(P))
    (reads, logits), vjp_fn = jax.vjp(
        functools.partial(_linear, params, cfg, tc, nodes, targets=targets, stop=stop), coef)
    B = reads.shape[0]
    cts = (jnp.eye(B, dtype=reads.dtype), jax.nn.one_hot(logit_ids, logits.shape[0], dtype=logits.dtype))
    if sharding is not None:
        cts = jax.lax.with_sharding_constraint(cts, sharding)
    return _source_columns(nodes, *jax.vmap(vjp_fn)(cts)[0])


# From this prompt length on, `_rows` is compiled with `lean_compiler_options`: at 1,024 tokens
# they take 0.14 GiB off each VJP batch at the same speed; at 16 tokens they would halve its speed.
LEAN_FROM_TOKENS = 512


@functools.cache
def _rows_program(lean: bool):
    """`_rows` compiled, with `lean_compiler_options` when `lean` (long prompts)."""
    return jax.jit(_rows, static_argnames=("cfg", "sharding"),
                   compiler_options=lean_compiler_options() if lean else None)


def _source_columns(nodes: _Nodes, g_feat, g_err, g_tok):
    """Coefficient gradients ([B, L, M], [B, L, pos], [B, pos]) -> rows [B, n_sources] over the
    graph's sources: node features, errors (zero at the first positions), tokens."""
    (B, L, M), P = g_feat.shape, g_tok.shape[1]
    return jnp.concatenate([g_feat.reshape(B, L * M)[:, nodes.slots],
                            (g_err * nodes.error_nodes).reshape(B, L * P), g_tok], axis=1)


@dataclasses.dataclass
class _Rows:
    """A block of adjacency rows, kept compact: only the columns of `sources` (sorted source
    ids). A target's input is reached by no feature or error of its layer or above, so a block of
    targets below layer l keeps the features and errors of layers < l, and the tokens."""

    nodes: np.ndarray    # [R] each row's target: a feature id, or n_sources + k for logit k
    rows: np.ndarray     # [R, len(sources)]
    sources: np.ndarray  # [S] the kept source ids, ascending

    def columns(self, ids: np.ndarray) -> np.ndarray:
        """[R, len(ids)] the rows at source columns `ids` (zero where not kept)."""
        at = np.minimum(np.searchsorted(self.sources, ids), len(self.sources) - 1)
        kept = self.sources[at] == ids
        out = np.zeros((len(self.rows), len(ids)), self.rows.dtype)
        out[:, kept] = self.rows[:, at[kept]]
        return out


def partial_influence(blocks: list[_Rows], probs, n_sources: int, max_iter: int = 128):
    """circuit-tracer's `compute_partial_influences`: each source's influence [n_sources] on the
    logits through the rows computed so far (`blocks`; logits are nodes n_sources + k, with
    probabilities `probs`).

    With x_k the weight reaching each row after k steps and s its row's 1 / sum |row|, a path
    goes on only through the features that have rows, so the recursion needs only those
    columns (x_{k+1} = (x_k * s) @ |rows[:, features]|), and the total is one pass,
    (sum_k x_k * s) @ |rows|: no normalised copy of the rows."""
    def pieces():  # (first row, block, |rows| of 32 rows): no whole copy of them
        at = 0
        for b in blocks:
            for i in range(0, len(b.rows), 32):
                yield at + i, b, np.abs(b.rows[i:i + 32], dtype=np.float64)
            at += len(b.rows)

    row_nodes = np.concatenate([b.nodes for b in blocks])
    scale = 1.0 / np.maximum(np.concatenate([a.sum(1) for _, _, a in pieces()]), 1e-8)
    is_feature = row_nodes < n_sources
    into = np.abs(np.concatenate([b.columns(row_nodes[is_feature]) for b in blocks]),
                  dtype=np.float64)
    x = np.zeros(len(row_nodes))
    x[~is_feature] = probs[row_nodes[~is_feature] - n_sources]
    reached = np.zeros_like(x)
    for _ in range(max_iter):
        if not x.any():
            break
        reached += x
        step = (x * scale) @ into
        x = np.zeros_like(x)
        x[is_feature] = step
    else:
        raise RuntimeError("the influence did not converge: the graph has a cycle")
    weights, total = reached * scale, np.zeros(n_sources)
    for at, b, a in pieces():
        total[b.sources] += weights[at:at + len(a)] @ a
    return total


def _nodes(tc: Transcoders, tokens, mlp_in, mlp_out, zero_positions: int, logit_dirs):
    """(_Nodes, node features [n, 3] (layer, pos, feature), their activations [n])."""
    per_layer = []
    for l in range(tc.cfg.n_layers):  # one layer's [pos, d_tc] at a time: never all of them
        a = np.asarray(_layer_acts(tc, mlp_in[l], l))
        p, f = np.nonzero(a)
        per_layer.append((p, f, a[p, f]))
    M = max(1, max(len(p) for p, _, _ in per_layer))
    M = M if M <= _CHUNK else -(-M // _CHUNK) * _CHUNK   # whole chunks (see _mlp_out)
    grid = np.zeros((3, len(per_layer), M))
    for l, (p, f, v) in enumerate(per_layer):
        grid[:, l, :len(p)] = p, f, v
    listed = np.concatenate([np.stack([np.full(len(p), l), p, f], 1)
                             for l, (p, f, _) in enumerate(per_layer)])
    slots = np.concatenate([l * M + np.arange(len(p)) for l, (p, _, _) in enumerate(per_layer)])
    keep = listed[:, 1] >= zero_positions
    P = len(tokens)
    nodes = _Nodes(jnp.asarray(tokens), jnp.asarray(grid[1], jnp.int32),
                   jnp.asarray(grid[0], jnp.int32), jnp.asarray(grid[2], jnp.float32), None,
                   jnp.asarray(slots[keep], jnp.int32),
                   jnp.asarray(np.arange(P) >= zero_positions, jnp.float32), logit_dirs)
    nodes = dataclasses.replace(nodes, errors=_errors(tc, nodes, mlp_in, mlp_out))
    values = np.concatenate([v for _, _, v in per_layer])[keep]
    return nodes, listed[keep], values


def attribute(params, cfg: Config, tc: Transcoders, tokens, *, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, batch_size: int = 64, zero_positions: int = 1,
              max_feature_nodes: Optional[int] = None, update_interval: int = 4,
              sharding=None, progress: bool = True) -> AttributionGraph:
    """The attribution graph of `tokens` [pos] through the transcoders `tc` (see module doc).

    batch_size: adjacency rows per vmapped VJP (memory grows with it). zero_positions: leading
    positions whose features and errors are not nodes (circuit-tracer: 1, the BOS token).
    max_feature_nodes: attribute only this many features, chosen as circuit-tracer does (after
    the logits, the unvisited features of highest influence through the rows so far,
    `update_interval * batch_size` at a time); the graph keeps only them. sharding: a Mesh (or a
    NamedSharding) over whose devices each block's rows are split (batch_size a multiple of
    their number; the model and transcoders as placed). progress: a bar over the rows on a
    terminal.
    """
    check_hooks(cfg, tc)
    sharding = chunk_sharding(sharding)
    if batch_size % chunk_splits(sharding):
        raise ValueError(f"batch_size={batch_size} rows do not split evenly over the "
                         f"{chunk_splits(sharding)} devices of the sharding; use a multiple of it")
    tokens = jnp.asarray(tokens).reshape(-1)
    mlp_in, mlp_out, last = _run_prompt(params, cfg, tc, tokens)
    logit_tokens, probs = salient_logits(last, max_n_logits, desired_logit_prob)
    V = last.shape[-1]
    dirs = jax.nn.one_hot(logit_tokens, V, dtype=jnp.float32).T - 1.0 / V
    nodes, index, values = _nodes(tc, np.asarray(tokens), mlp_in, mlp_out, zero_positions, dirs)
    del mlp_in, mlp_out
    n_all, n_logit, L, P = len(index), len(logit_tokens), cfg.n_layers, len(tokens)
    n_sources = n_all + (L + 1) * P
    limit = n_all if max_feature_nodes is None else min(max_feature_nodes, n_all)
    bar = tqdm(total=n_logit + limit, desc="attribution rows", unit="row",
               disable=not shown(progress))

    program = _rows_program(P >= LEAN_FROM_TOKENS)
    below = np.searchsorted(index[:, 0], np.arange(L + 1))  # node features under each layer

    def sources_below(layer: int) -> np.ndarray:
        """The sources that can reach an input below `layer` (L: every source)."""
        return np.r_[0:below[layer], n_all:n_all + layer * P, n_all + L * P:n_sources]

    def rows_of(targets: np.ndarray) -> list[_Rows]:
        """Rows of targets (ids: features 0..n_all-1, then logits), a block per VJP batch."""
        is_logit = targets >= n_all
        feature = np.concatenate([index, np.full((1, 3), -1)])[np.where(is_logit, n_all, targets)]
        layer = np.where(is_logit, L, feature[:, 0])
        ids = np.where(is_logit, targets - n_all + n_sources, targets)
        order = np.argsort(layer, kind="stable")  # by layer, so that blocks stop early
        blocks = []
        for start in range(0, len(targets), batch_size):
            chunk = order[start:start + batch_size]
            t = np.full((3, batch_size), -1)
            logit_ids = np.full(batch_size, -1)
            t[:, :len(chunk)] = feature[chunk].T
            logit_ids[:len(chunk)] = np.where(is_logit[chunk], targets[chunk] - n_all, -1)
            top = int(layer[chunk].max())
            release_freed_memory()  # what the last block (or the influence update) freed
            rows = np.asarray(program(params, cfg, tc, nodes, jnp.asarray(t, jnp.int32),
                                      jnp.asarray(logit_ids, jnp.int32), top + 1,
                                      sharding))[:len(chunk)]
            kept = sources_below(top)
            blocks.append(_Rows(ids[chunk], rows if top == L else rows[:, kept], kept))
            del rows
            bar.update(len(chunk))
        return blocks

    blocks = rows_of(n_all + np.arange(n_logit))
    picked = [np.arange(n_all)] if limit == n_all else []  # feature ids, update by update
    if picked:
        blocks += rows_of(picked[0])
    visited = np.zeros(n_all, bool)
    while sum(map(len, picked)) < limit:
        influence = partial_influence(blocks, probs, n_sources)
        rank = np.argsort(-influence[:n_all], kind="stable")
        pending = rank[~visited[rank]][:min(update_interval * batch_size,
                                            limit - sum(map(len, picked)))]
        picked.append(pending)
        blocks += rows_of(pending)
        visited[pending] = True
    bar.close()
    selected = np.sort(np.concatenate([np.zeros(0, int)] + picked))
    columns = np.r_[selected, np.arange(n_all, n_sources)]
    place = np.zeros(n_all + 1, int)
    place[selected] = np.arange(len(selected))
    edges = np.zeros((len(selected) + n_logit, len(columns)), np.float32)
    for b in blocks:   # a block at a time: no copy of all the rows
        is_logit = b.nodes >= n_sources
        edges[np.where(is_logit, len(selected) + b.nodes - n_sources,
                       place[np.where(is_logit, n_all, b.nodes)])] = b.columns(columns)
    return AttributionGraph(np.asarray(tokens), index[selected], values[selected], logit_tokens,
                            probs, edges, L, tc.cfg.scan)
