"""What a model does with one text: `analyze` computes it, `summary` prints it, `write_report`
writes a self-contained HTML page with PNG figures (the `jtlens run` command)."""

from __future__ import annotations

import base64
import html
import io
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.attention_view import attention_html, attention_png
from jtlens.head_detector import induction_pattern_scores, induction_patterns
from jtlens.model import Ctx, unembed
from jtlens.tokens import to_str_tokens

Analysis = dict[str, Any]


def _final_norm_linear(model, cache, comps):
    """Components [..., d_model] -> their share of ln_final's output at the last position,
    and the norm's bias (the share of no component).

    Centre (LayerNorm) and divide by the cached scale, as TransformerLens's `apply_ln_to_stack`;
    then multiply by the norm's weight, which TransformerLens leaves out (it expects fold_ln), so
    that the shares add up to the logit on unprocessed models too.
    """
    cfg, p = model.cfg, model.params.get("ln_final") or {}
    kind = cfg.final_norm_type
    if kind is None:
        return comps, 0.0
    if kind.startswith("LN"):
        comps = comps - comps.mean(-1, keepdims=True)
    comps = comps / cache["ln_final.hook_scale"][0, -1]
    return comps * p.get("w", 1.0), p.get("b", 0.0)


def direct_logit_attribution(model, cache, target: int) -> dict:
    """The last position's logit of `target`, split into embedding, each head, each attention
    bias, each MLP and the constant (norm bias + b_U). Entries sum to the logit (before any
    final soft-cap; not for models with post-norms, whose residual is not a sum)."""
    cfg, params = model.cfg, model.params
    z = cache["blocks.*.attn.hook_z"][:, 0, -1]                        # [L, H, d_head]
    heads = jnp.einsum("lhd,lhdm->lhm", z, params["blocks"]["attn"]["W_O"])
    embed = cache["hook_embed"][0, -1]
    if "hook_pos_embed" in cache:
        embed = embed + cache["hook_pos_embed"][0, -1]
    parts = {"embed": embed, "heads": heads, "attn_bias": params["blocks"]["attn"]["b_O"]}
    if not cfg.attn_only:
        parts["mlp"] = cache["blocks.*.hook_mlp_out"][:, 0, -1]
    w_u = params["unembed"]["W_U"][:, target]
    out = {}
    bias = 0.0
    for name, comp in parts.items():
        normed, bias = _final_norm_linear(model, cache, comp)
        out[name] = np.asarray(normed @ w_u)
    norm_bias = float(bias @ w_u) if jnp.ndim(bias) else 0.0
    out["constant"] = norm_bias + float(params["unembed"]["b_U"][target])
    return out


def induction(model, seq_len: int = 20, n_prompts: int = 4) -> dict:
    """Induction heads, found as TransformerLens users do: random tokens said twice.

    Returns scores [n_layers, n_heads] (mean attention from the second copy to the token after
    the first occurrence), the best head (layer, head), its pattern [pos, pos] on the first
    prompt, and that prompt's str_tokens.
    """
    seq_len = min(seq_len, (model.cfg.n_ctx - 1) // 2)
    rep, pattern = induction_patterns(model, seq_len, n_prompts)       # pattern [L, b, H, q, k]
    scores = np.asarray(induction_pattern_scores(pattern, seq_len))
    layer, head = np.unravel_index(int(scores.argmax()), scores.shape)
    return dict(scores=scores, best=(int(layer), int(head)), seq_len=seq_len,
                pattern=np.asarray(pattern[layer, 0, head]),
                str_tokens=(to_str_tokens(model.tokenizer, rep[0]) if model.tokenizer is not None
                            else [str(int(t)) for t in rep[0]]))


def analyze(model, text: str, *, top_k: int = 5, n_neurons: int = 5, truncate: bool = False,
            capture_all: bool = False) -> Analysis:
    """Run `model` (a HookedTransformer with a tokenizer) on `text` and collect what it does.

    Returns a dict of plain arrays: str_tokens [pos]; top_ids/top_probs [pos, top_k] (next-token
    predictions); loss [pos-1]; lens_ids/lens_probs [n_layers+1, pos] (logit lens: top token
    reading each layer's input residual, then the final residual, through ln_final+unembed);
    resid_norm [n_layers+1] (at the last position); patterns [n_layers, n_heads, pos, pos];
    dla (direct logit attribution of the top prediction at the last position); neurons
    (per MLP layer the top (neuron, position, activation)); induction (see `induction`);
    cache when capture_all.
    """
    if not text or not text.strip():
        raise ValueError("the text is empty: give some words to run the model on")
    cfg = model.cfg
    tokens = model.to_tokens(text, truncate=truncate)
    names = ["hook_embed", "blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern",
             "blocks.*.attn.hook_z", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    if cfg.positional_embedding_type == "standard":
        names.append("hook_pos_embed")
    if cfg.final_norm_type is not None:
        names.append("ln_final.hook_scale")
    if not cfg.attn_only:
        names += ["blocks.*.hook_mlp_out", "blocks.*.mlp.hook_post"]
    logits, cache = model.run_with_cache(tokens, names_filter=None if capture_all else names)
    probs = np.asarray(jax.nn.softmax(logits[0].astype(jnp.float32), -1))
    top_ids = np.argsort(-probs, -1)[:, :top_k]
    resid = jnp.concatenate([cache["blocks.*.hook_resid_pre"][:, 0],
                             cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]])  # [L+1, P, D]
    lens = np.asarray(jax.nn.softmax(unembed(model.params, resid, Ctx.of(cfg, None, *resid.shape[:2]))
                                     .astype(jnp.float32), -1))
    lens_ids = lens.argmax(-1)
    target = int(top_ids[-1, 0])
    a: Analysis = dict(
        text=text, model_name=cfg.model_name, str_tokens=model.to_str_tokens(tokens[0]),
        tokens=np.asarray(tokens[0]), top_ids=top_ids,
        top_probs=np.take_along_axis(probs, top_ids, -1),
        loss=np.asarray(model.loss_fn(logits, tokens, per_token=True)[0]),
        lens_ids=lens_ids, lens_probs=np.take_along_axis(lens, lens_ids[..., None], -1)[..., 0],
        resid_norm=np.asarray(jnp.linalg.norm(resid[:, -1], axis=-1)),
        patterns=np.asarray(cache["blocks.*.attn.hook_pattern"][:, 0]),
        target=target, target_logit=float(logits[0, -1, target]),
        dla=direct_logit_attribution(model, cache, target), neurons=[], induction=induction(model))
    if not cfg.attn_only:
        post = np.asarray(cache["blocks.*.mlp.hook_post"][:, 0])       # [L, P, M]
        for layer in post:
            peak = layer.max(0)
            best = np.argsort(-peak)[:n_neurons]
            a["neurons"].append([(int(n), int(layer[:, n].argmax()), float(peak[n])) for n in best])
    a["top_strs"] = to_str_tokens(model.tokenizer, top_ids)
    a["lens_strs"] = to_str_tokens(model.tokenizer, lens_ids)
    a["target_str"] = a["top_strs"][-1][0]
    if capture_all:
        a["cache"] = cache
    return a


def summary(a: Analysis, max_rows: int = 12) -> str:
    """A plain-text account of `analyze`'s result (what `jtlens run` prints)."""
    toks, n = a["str_tokens"], len(a["str_tokens"])
    lines = [f"{a['model_name']} on {n} tokens: " + " ".join(repr(t) for t in toks), "",
             "Next token after the text: " + ", ".join(
                 f"{s!r} {p:.1%}" for s, p in zip(a["top_strs"][-1], a["top_probs"][-1])), "",
             f"Per-token loss (mean {a['loss'].mean():.3f}) and top prediction per position:"]
    rows = range(n) if n <= max_rows else [*range(max_rows // 2), *range(n - max_rows // 2, n)]
    for i in rows:
        loss = f"{a['loss'][i]:6.3f}" if i < n - 1 else "     -"
        lines.append(f"  {i:3d} {toks[i]!r:>16} loss->next {loss}   predicts "
                     f"{a['top_strs'][i][0]!r} {a['top_probs'][i][0]:.1%}")
    layers = [f"layer {i}" for i in range(len(a["lens_strs"]) - 1)] + ["final"]
    lines += ["", "Logit lens at the last position (top token reading each layer's input):"]
    lines += [f"  {name:>8}: {s[-1]!r} {p[-1]:.1%}   resid norm {r:.2f}"
              for name, s, p, r in zip(layers, a["lens_strs"], a["lens_probs"], a["resid_norm"])]
    lines += ["", "Most-attended token from the last position, per head:"]
    last = a["patterns"][:, :, -1]                                   # [L, H, P]
    for layer, heads in enumerate(last):
        lines.append(f"  L{layer}: " + "  ".join(
            f"H{h} {toks[int(row.argmax())]!r}@{int(row.argmax())} {row.max():.2f}"
            for h, row in enumerate(heads)))
    if a["neurons"]:
        lines += ["", "Most active MLP neurons (neuron, where, activation):"]
        lines += [f"  L{layer}: " + "  ".join(f"N{nr} @{toks[pos]!r} {v:.2f}" for nr, pos, v in top)
                  for layer, top in enumerate(a["neurons"])]
    ind = a["induction"]
    ranked = sorted(np.ndenumerate(ind["scores"]), key=lambda x: -x[1])
    lines += ["", "Induction heads (attention to the token after the earlier copy, random tokens "
              "said twice): " + ", ".join(f"L{l}H{h} {v:.2f}" for (l, h), v in ranked[:4])]
    dla = a["dla"]
    heads = [(float(v), f"L{l}H{h}") for (l, h), v in np.ndenumerate(dla["heads"])]
    heads += [(float(v), f"MLP{l}") for l, v in enumerate(dla.get("mlp", []))]
    heads.sort(key=lambda x: -abs(x[0]))
    lines += ["", f"Direct logit attribution of {a['target_str']!r} (logit {a['target_logit']:.2f}): "
              + ", ".join(f"{name} {v:+.2f}" for v, name in heads[:6])
              + f", embed {float(dla['embed']):+.2f}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML + PNG

def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def dla_png(a: Analysis) -> bytes:
    """Heads [n_layers, n_heads] heatmap plus the per-layer MLP bars."""
    plt = pyplot()
    dla = a["dla"]
    has_mlp = "mlp" in dla
    fig, axes = plt.subplots(1, 2 if has_mlp else 1, figsize=(9 if has_mlp else 5, 3), squeeze=False)
    lim = float(np.abs(dla["heads"]).max()) or 1.0
    im = axes[0, 0].imshow(dla["heads"], cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    axes[0, 0].set(xlabel="head", ylabel="layer", title=f"heads -> logit of {a['target_str']!r}",
                   xticks=range(dla["heads"].shape[1]), yticks=range(dla["heads"].shape[0]))
    fig.colorbar(im, ax=axes[0, 0])
    if has_mlp:
        axes[0, 1].bar(range(len(dla["mlp"])), dla["mlp"], color="tab:orange")
        axes[0, 1].set(xlabel="layer", title="MLPs", xticks=range(len(dla["mlp"])))
    return _png(fig)


def induction_png(a: Analysis) -> bytes:
    """Induction score per head, next to the best head's pattern on random tokens said twice."""
    plt = pyplot()
    ind = a["induction"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw=dict(width_ratios=[1, 2]))
    im = left.imshow(ind["scores"], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    left.set(xlabel="head", ylabel="layer", title="induction score",
             xticks=range(ind["scores"].shape[1]), yticks=range(ind["scores"].shape[0]))
    fig.colorbar(im, ax=left)
    toks = [repr(t)[1:-1] for t in ind["str_tokens"]]  # random ids include control bytes
    right.imshow(ind["pattern"], cmap="Blues", vmin=0, vmax=1)
    right.set_title("L{}H{} on {} random tokens said twice".format(*ind["best"], ind["seq_len"]))
    right.set_xticks(range(len(toks)), toks, rotation=90, fontsize=5)
    right.set_yticks(range(len(toks)), toks, fontsize=5)
    return _png(fig)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(text: str, p: float) -> str:
    return (f'<td style="background:rgba(33,113,181,{0.7 * p:.2f})" title="{p:.1%}">'
            f"{html.escape(repr(text))}</td>")


def write_report(a: Analysis, out_dir) -> pathlib.Path:
    """Write `report.html` (self-contained) and its PNGs into `out_dir`; returns the HTML path."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    toks = a["str_tokens"]
    esc = lambda s: html.escape(repr(s))  # noqa: E731
    parts = [f"<h1>jtlens: {html.escape(a['model_name'])}</h1>",
             f"<p class=text>{html.escape(a['text'])}</p>",
             "<h2>Tokens and predictions</h2><table><tr><th>pos</th><th>token</th>"
             "<th>loss of next</th><th>top predictions</th></tr>"]
    for i, t in enumerate(toks):
        loss = f"{a['loss'][i]:.3f}" if i < len(toks) - 1 else ""
        preds = ", ".join(f"{esc(s)} {p:.1%}" for s, p in zip(a["top_strs"][i], a["top_probs"][i]))
        parts.append(f"<tr><td>{i}</td><td class=tok>{esc(t)}</td><td>{loss}</td><td>{preds}</td></tr>")
    parts.append("</table><h2>Logit lens</h2><p>Top token reading each layer's input residual "
                 "(and the final residual) through ln_final and the unembedding.</p>"
                 "<table><tr><th></th>" + "".join(f"<th>{esc(t)}</th>" for t in toks)
                 + "<th>resid norm (last)</th></tr>")
    n_rows = len(a["lens_strs"])
    for r in range(n_rows):
        name = "final" if r == n_rows - 1 else f"layer {r}"
        parts.append(f"<tr><th>{name}</th>"
                     + "".join(_cell(s, p) for s, p in zip(a["lens_strs"][r], a["lens_probs"][r]))
                     + f"<td>{a['resid_norm'][r]:.2f}</td></tr>")
    parts.append("</table><h2>Direct logit attribution</h2>"
                 f"<p>Of the top prediction {esc(a['target_str'])} at the last position "
                 f"(logit {a['target_logit']:.3f}; embedding {float(a['dla']['embed']):+.3f}, "
                 f"biases {float(a['dla']['constant']) + float(np.sum(a['dla']['attn_bias'])):+.3f}).</p>")
    png = dla_png(a)
    (out / "dla.png").write_bytes(png)
    parts.append(_img(png, "direct logit attribution"))
    if a["neurons"]:
        parts.append("<h2>Most active MLP neurons</h2><table><tr><th>layer</th><th>neuron @ token: "
                     "activation</th></tr>")
        parts += [f"<tr><td>{l}</td><td>" + "; ".join(f"N{n} @ {esc(toks[p])}: {v:.2f}"
                                                      for n, p, v in top) + "</td></tr>"
                  for l, top in enumerate(a["neurons"])]
        parts.append("</table>")
    ind = a["induction"]
    parts.append("<h2>Induction heads</h2><p>Each head's mean attention from the second copy of "
                 f"{ind['seq_len']} random tokens said twice to the token after the same token's "
                 "first occurrence (1 = a perfect induction head). The best head, L{}H{} ({:.2f}), "
                 "draws the off-diagonal stripe.</p>".format(*ind["best"], ind["scores"].max()))
    png = induction_png(a)
    (out / "induction.png").write_bytes(png)
    parts.append(_img(png, "induction heads"))
    parts.append("<h2>Attention patterns</h2><p>Rows: query (destination) token; columns: key "
                 "(source) token.</p>")
    for layer, pats in enumerate(a["patterns"]):
        png = attention_png(pats, out / f"attention_layer{layer}.png", toks, layer).read_bytes()
        page = f"attention_layer{layer}.html"
        (out / page).write_text(attention_html(pats, toks, layer), encoding="utf-8")
        parts.append(f'<h3>Layer {layer} (<a href="{page}">interactive view</a>)</h3>'
                     + _img(png, f"attention pattern layer {layer}"))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;"
             "white-space:nowrap}.text{font-size:18px}img{max-width:100%}")
    path = out / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>jtlens report</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>",
                    encoding="utf-8")
    return path
