"""An attribution graph as circuit-tracer's graph JSON (`create_graph_files`), which its local
server and Neuronpedia display.

Top level: metadata {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
schema_version}, qParams, nodes, links [{source, target, weight}]. Node ids: features
"{layer}_{feature}_{pos}", errors "0_{layer}_{pos}", tokens "E_{token id}_{pos}", logits
"{n_layers + 1}_{token id}_{pos}" (a layer-0 feature numbered below n_layers shares its id with
an error node, in circuit-tracer too). Only nodes the pruning keeps, and of those only nodes on a
kept edge (tokens and logits always), are written.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.experiments.sparse.attribution import AttributionGraph
from jtlens.experiments.sparse.dashboards import top_positions
from jtlens.experiments.sparse.features import through_final_norm
from jtlens.experiments.sparse.graph_prune import prune_graph, row_nodes
from jtlens.experiments.sparse.transcoder import Transcoders
from jtlens.experiments.sparse.transcoder_train import mlp_activations


def _node(node_id, feature, layer, ctx_idx, feature_type, js_id, **extra) -> dict:
    """A node with every field of circuit-tracer's `Node` model, in its order."""
    return {"node_id": node_id, "feature": int(feature), "layer": str(layer), "ctx_idx": int(ctx_idx),
            "feature_type": feature_type, "token_prob": extra.get("token_prob", 0.0),
            "is_target_logit": extra.get("is_target_logit", False), "run_idx": 0,
            "reverse_ctx_idx": 0, "jsNodeId": js_id, "clerp": extra.get("clerp", ""),
            "influence": extra.get("influence"), "activation": extra.get("activation")}


def _nodes(graph: AttributionGraph, node_mask, cumulative, decode: Callable[[int], str],
           labels: dict) -> dict:
    L, P = graph.n_layers, graph.n_pos
    nodes = {}
    for i in map(int, node_mask.nonzero()[0]):
        inf = float(cumulative[i])
        kind, layer, pos, item = graph.locate(i)
        if kind == "feature":
            cantor = (layer + item) * (layer + item + 1) // 2 + item
            nodes[i] = _node(f"{layer}_{item}_{pos}", cantor, layer, pos, "cross layer transcoder",
                             f"{layer}_{item}-0", influence=inf,
                             activation=float(graph.activation_values[i]),
                             clerp=labels.get(i, ""))
        elif kind == "error":
            nodes[i] = _node(f"0_{layer}_{pos}", -1, layer, pos, "mlp reconstruction error",
                             f"{layer}_{pos}-0", influence=inf)
        elif kind == "token":
            tok = int(graph.tokens[pos])
            nodes[i] = _node(f"E_{tok}_{pos}", pos, "E", pos, "embedding", f"E_{tok}-{pos}",
                             influence=inf)
        else:
            tok, prob = int(graph.logit_tokens[item]), float(graph.logit_probabilities[item])
            nodes[i] = _node(f"{L + 1}_{tok}_{P - 1}", tok, L + 1, P - 1, "logit",
                             f"L_{tok}-{P - 1}", token_prob=prob, is_target_logit=item == 0,
                             clerp=f'Output "{decode(tok)}" (p={prob:.3f})')
    return nodes


def output_token_labels(graph: AttributionGraph, params, cfg: Config, tc: Transcoders,
                        decode: Callable[[int], str], k: int = 3) -> dict:
    """{feature node index: 'out: "a" "b" "c"'}: the k tokens each graph feature's decoder row
    (a CLT's summed over the layers it writes) raises most through ln_final and the
    unembedding; `graph_json(labels=...)` shows them as the nodes' labels."""
    layer, _, feature = np.asarray(graph.active_features).T
    rows = tc.params["W_dec"][layer, feature]                 # [n, d_out] or a CLT's [n, L, d_out]
    rows = rows.sum(1) if tc.cfg.cross_layer else rows
    logits = through_final_norm(rows, params, cfg) @ params["unembed"]["W_U"]
    top = np.asarray(jax.lax.top_k(logits, k)[1])
    return {i: "out: " + " ".join(json.dumps(decode(int(t))) for t in row) for i, row in enumerate(top)}


@functools.partial(jax.jit, static_argnames=("cfg",))
def transcoder_feature_acts(params, tokens, cfg: Config, tc: Transcoders, features):
    """Activations [batch, pos, F] of the transcoder features features [F, 2] (layer, feature)
    on tokens [batch, pos]: one forward, each layer that holds a requested feature encoded once
    (TopK needs its whole layer)."""
    layers, ids = features[:, 0], features[:, 1]
    x, _ = mlp_activations(params, cfg, tokens, tc.cfg.input_hook, tc.cfg.output_hook)

    def add(acc, layer):                                         # x: [L, batch * pos, d_in]
        acts = jax.lax.cond(jnp.any(layers == layer), lambda: tc.encode_at(x[layer], layer)[..., ids],
                            lambda: jnp.zeros_like(acc))
        return acc + jnp.where(layers == layer, acts, 0.0), None

    acc, _ = jax.lax.scan(add, jnp.zeros((x.shape[1], len(ids)), x.dtype), jnp.arange(cfg.n_layers))
    return acc.reshape(tokens.shape + (len(ids),))


def top_activation_labels(graph: AttributionGraph, params, cfg: Config, tc: Transcoders, windows,
                          decode: Callable[[int], str], k: int = 3, left: int = 6,
                          ignore_token: Optional[int] = None, batch_size: int = 16,
                          progress: bool = True) -> dict:
    """{feature node index: 'top: ...context[token]... 2.31 | ...'}: each graph feature's k
    largest activations over corpus windows [n, P] (e.g. `context_windows(corpus_tokens(...))`),
    each with `left` tokens before the token it fires on (in brackets); `graph_json(labels=...)`
    shows them on hover. Positions holding `ignore_token` (BOS) do not count."""
    windows = np.asarray(windows, np.int32)
    features = jnp.asarray(np.asarray(graph.active_features)[:, [0, 2]], jnp.int32)
    values, win, pos, _ = top_positions(
        lambda t: transcoder_feature_acts(params, t, cfg, tc, features), windows, len(features),
        k, batch_size, ignore_token, progress)
    labels = {}
    for i in range(len(features)):
        parts = [f"{''.join(map(decode, windows[w, max(0, p - left):p]))}[{decode(int(windows[w, p]))}] "
                 f"{v:.2f}" for v, w, p in zip(values[i], win[i], pos[i]) if w >= 0]
        labels[i] = "top: " + (" | ".join(parts) if parts else "(never active)")
    return labels


def graph_json(graph: AttributionGraph, slug: str, *, scan: Optional[str] = None,
               decode: Optional[Callable[[int], str]] = None, prompt: Optional[str] = None,
               node_threshold: float = 0.8, edge_threshold: float = 0.98,
               labels: Optional[dict] = None) -> dict:
    """The pruned graph as circuit-tracer's JSON dict. decode: token id -> text (default: the
    id as text); scan: the transcoders' identifier (default graph.scan); labels: {feature node
    index: text} for the features' "clerp" (e.g. `output_token_labels`)."""
    scan = scan or graph.scan
    if scan is None:
        raise ValueError("the graph has no scan (the transcoders' identifier, which viewers use to "
                         "find feature pages): pass scan='...' or set TranscoderConfig.scan")
    decode = decode or str
    node_mask, edge_mask, cumulative = prune_graph(graph, node_threshold, edge_threshold)
    nodes = _nodes(graph, node_mask, cumulative, decode, labels or {})
    rows, srcs = edge_mask.nonzero()
    targets = row_nodes(graph)
    links = [{"source": nodes[s]["node_id"], "target": nodes[int(targets[r])]["node_id"],
              "weight": float(graph.edges[r, s])}
             for r, s in zip(rows.tolist(), srcs.tolist()) if s in nodes and targets[r] in nodes]
    linked = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values()
            if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    prompt_tokens = [decode(int(t)) for t in graph.tokens]
    return {"metadata": {"slug": slug, "scan": scan, "transcoder_list": [],
                         "prompt_tokens": prompt_tokens,
                         "prompt": "".join(prompt_tokens) if prompt is None else prompt,
                         "node_threshold": node_threshold, "schema_version": 1},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                        "sg_pos": ""},
            "nodes": used, "links": links}


def _write(path: Path, data):
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_graph_json(graph: AttributionGraph, folder: Union[str, Path], slug: str, **kwargs) -> Path:
    """Write `folder/<slug>.json` and list it in `folder/graph-metadata.json` (replacing an
    entry of the same slug), as circuit-tracer's `create_graph_files` does; keyword arguments
    as `graph_json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = graph_json(graph, slug, **kwargs)
    _write(folder / f"{slug}.json", data)
    index = folder / "graph-metadata.json"
    listed = json.loads(index.read_text()) if index.is_file() else {"graphs": []}
    listed["graphs"] = [g for g in listed["graphs"] if g["slug"] != slug] + [data["metadata"]]
    _write(index, listed)
    return folder / f"{slug}.json"
