"""Transcoders for every layer of SmolLM2-135M, trained here, and the attribution graph of
"The Eiffel Tower is located in the city of" -> " Paris".

    python scripts/smollm2_graph.py [--tokens 65536] [--d-transcoder 2304] [--k 16] [--out docs/eiffel]

Training: per-layer TopK transcoders (MLP input `ln2.hook_normalized` -> `hook_mlp_out`), all 30
layers in one vmapped step, on the CPython-docstrings corpus (offline once fetched), streamed:
each step runs the model on a fresh batch and trains every layer on its activations. Then
`attribute` builds the graph; the script writes the transcoders (circuit-tracer's format), the
graph's JSON (circuit-tracer's schema) and its HTML view, and prints the figures the README
quotes: the transcoders' fraction of variance unexplained, the graph's replacement and
completeness scores, the share of the logit's influence through error nodes, the top path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jtlens
from jtlens.report.graph_view import write_graph_html
from jtlens.sparse import (attribute, graph_json, graph_scores, output_token_labels, prune_graph,
                           top_activation_labels, write_graph_json)
from jtlens.sparse.corpus import corpus_tokens
from jtlens.sparse.graph_prune import node_influence
from jtlens.sparse.train import Hyper, TrainConfig, init_state, train_step
from jtlens.sparse.transcoder_formats import write_circuit_tracer
from jtlens.sparse.transcoder_train import mlp_activations, to_transcoders

PROMPT, ANSWER = "The Eiffel Tower is located in the city of", " Paris"


def train(model, args):
    cfg = model.cfg
    seq = args.seq
    per_step = args.batch * seq
    steps = args.tokens // per_step
    stream = corpus_tokens("docstrings", model.tokenizer, max_tokens=steps * per_step)
    batches = stream[: steps * per_step].reshape(steps, args.batch, seq)
    tc = TrainConfig("topk", d_in=cfg.d_model, d_sae=args.d_transcoder, d_out=cfg.d_model,
                     k_max=args.k, total_steps=steps, lr_warm_up_steps=steps // 20,
                     lr_decay_steps=steps // 5)
    hyper = Hyper.stack([Hyper(k=args.k, lr=args.lr)] * cfg.n_layers)
    state = init_state(tc, hyper, jax.random.PRNGKey(0))
    acts = jax.jit(lambda p, t: mlp_activations(p, cfg, t))
    step = jax.jit(lambda s, x, y: train_step(s, hyper, (x, y), tc))
    for i in tqdm(range(steps), desc=f"training {cfg.n_layers} transcoders", unit="step"):
        x, y = acts(model.params, jnp.asarray(batches[i]))
        state, metrics = step(state, x, y)
    return to_transcoders(state, hyper, tc), metrics


def top_path(graph, pruned, decode) -> list[str]:
    """From the top logit back to a token, each step the strongest positive input edge from a
    feature or token that the pruned graph keeps; the path reads token -> ... -> logit."""
    A = np.where(np.asarray(pruned.edge_mask), graph.edges, 0.0)   # rows: features, logits
    kinds = graph.node_kinds()
    first_logit = graph.n_features + (graph.n_layers + 1) * graph.n_pos

    def label(n: int) -> str:
        kind, layer, pos, item = graph.locate(n)
        return {"logit": lambda: f"logit {decode(int(graph.logit_tokens[item]))!r}",
                "feature": lambda: f"L{layer} feature {item} @{pos}",
                "error": lambda: f"L{layer} error @{pos}",
                "token": lambda: f"token {decode(int(graph.tokens[pos]))!r} @{pos}"}[kind]()

    A[:, kinds == "error"] = 0.0  # the path through features (errors: their share is printed)
    row, node, path = graph.n_features, first_logit, [label(first_logit)]  # the top logit's row
    while kinds[node] != "token" and A[row].max() > 0:
        node = row = int(np.argmax(A[row]))  # a source; a feature's row has its node's index
        path.append(label(node))
    return path[::-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=65536, help="training tokens")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--d-transcoder", type=int, default=2304)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-feature-nodes", type=int, default=512)
    p.add_argument("--out", default="docs/eiffel")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = jtlens.HookedTransformer.from_pretrained("smollm2-135m")
    start = time.perf_counter()
    tc, metrics = train(model, args)
    trained = time.perf_counter() - start
    write_circuit_tracer(tc, out / "transcoders", overwrite=True)
    tokens = model.to_tokens(PROMPT)[0]
    start = time.perf_counter()
    graph = attribute(model.params, model.cfg, tc, tokens, max_feature_nodes=args.max_feature_nodes)
    attributed = time.perf_counter() - start
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    replacement, completeness = graph_scores(graph)
    inf = node_influence(graph)
    err = slice(graph.n_features, graph.n_features + graph.n_layers * graph.n_pos)
    decode = lambda t: model.tokenizer.decode([t])  # noqa: E731
    scan = f"jtlens-smollm2-135m-transcoders-{args.d_transcoder}-k{args.k}"
    # labels: the tokens each feature raises, and its top activations on 16k corpus tokens
    windows = corpus_tokens("docstrings", model.tokenizer, max_tokens=16384)[:16384].reshape(-1, 64)
    tops = top_activation_labels(graph, model.params, model.cfg, tc, windows, decode,
                                 ignore_token=int(windows[0, 0]))
    labels = {i: f"{out} | {tops[i]}"
              for i, out in output_token_labels(graph, model.params, model.cfg, tc, decode).items()}
    data = graph_json(graph, "eiffel", scan=scan, decode=decode, labels=labels)
    write_graph_json(graph, out, "eiffel", scan=scan, decode=decode, labels=labels)
    write_graph_html(data, out / "eiffel.html")
    figures = dict(
        training_tokens=int(args.tokens // (args.batch * args.seq) * args.batch * args.seq),
        d_transcoder=args.d_transcoder, k=args.k, train_seconds=round(trained),
        # the last step's, averaged over layers (explained_variance: of the MLP output)
        last_step={k: round(float(np.mean(v)), 4) for k, v in metrics.items()},
        attribute_seconds=round(attributed, 1), feature_nodes=graph.n_features,
        pruned_nodes=int(np.asarray(pruned.node_mask).sum()),
        top_logits=[(decode(int(t)), round(float(q), 3))
                    for t, q in zip(graph.logit_tokens, graph.logit_probabilities)],
        replacement_score=round(replacement, 3), completeness_score=round(completeness, 3),
        error_share_of_influence=round(float(inf[err].sum() / inf.sum()), 3),
        top_path=top_path(graph, pruned, decode))
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
