"""What a model does with one text: `analyze` computes it, `summary` prints it, `write_report`
writes a self-contained HTML page with SVG figures and an interactive attention viewer (the
`jtlens run` command)."""

from __future__ import annotations

import functools
import html
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.report.attention_view import attention_viewer
from jtlens.core.compilation_cache import bucket, quick_jit
from jtlens.experiments.head_detector import induction_pattern_scores, induction_patterns
from jtlens.core.forward import context
from jtlens.core.pieces import unembed
from jtlens.core.remembered import remembered
from jtlens.report.figures import (answer_lens_svgs, cell, dla_positions_svgs, dla_svgs,
                                   html_page, induction_svgs, svg_figure)
from jtlens.report.patching_section import patching_html
from jtlens.report.sae_section import sae_html
from jtlens.core.tokens import bos_id, to_str_tokens

Analysis = dict[str, Any]

# The report calls a head an induction head only when its score reaches this: a head attending
# uniformly over n earlier tokens scores about 1/n, so 0.3 is several times chance for n >= 20.
INDUCTION_THRESHOLD = 0.3
# Per-position views of a long text (the logit lens, answer views, the attention viewer) cover
# this many positions: the lens costs layers x positions x vocabulary, and the viewer's data
# grows with positions squared. The report says when it shows fewer than all.
WINDOW = 64


# ----------------------------------------------------------------------------- attribution

def _readout(model, direction, bias):
    """A logit direction [d_model] seen through ln_final: (d, const) such that a component x at
    a position adds (x . d) / scale[pos] to the logit, and const is what no component adds.

    LayerNorm's centring moves into d (x - mean(x) dotted with v is x dotted with v - mean(v));
    ln_final's weight is multiplied in, which TransformerLens's `logit_attrs` leave out (they
    expect fold_ln), so that the parts add up to the logit on unprocessed models too.
    """
    kind, p = model.cfg.final_norm_type, model.params.get("ln_final") or {}
    if kind is None:
        return direction, bias
    d = direction * np.asarray(p.get("w", 1.0))
    if kind.startswith("LN"):
        d = d - d.mean()
    return d, bias + (np.asarray(p["b"]) @ direction if "b" in p else 0.0)


def _attn_out_norm(cfg) -> Optional[str]:
    """The norm applied to the attention's output before the residual add, if any."""
    if cfg.use_normalization_before_and_after:
        return "ln1_post"
    return "ln1" if cfg.norm_sublayer_outputs else None


def dla_by_position(model, cache, direction, bias=0.0) -> dict:
    """Direct logit attribution at every position of the first prompt, along `direction`
    [d_model] (a column of W_U, or the difference of two) plus `bias` (b_U's share).

    Returns embed [pos], heads [pos, n_layers, n_heads], attn_bias [pos, n_layers],
    mlp [pos, n_layers] (not for attention-only models) and constant [pos]; they sum to the
    logit (difference) at each position, before any final soft-cap.
    """
    # On the host, in numpy: a handful of small products, where each eager jax op would be one
    # more program to compile (or look up in the compilation cache) per process.
    cfg, attn = model.cfg, model.params["blocks"]["attn"]
    get = lambda name: np.asarray(cache[name], np.float32)                    # noqa: E731
    d, const = _readout(model, np.asarray(direction, np.float32), np.asarray(bias, np.float32))
    inv = (1.0 / get("ln_final.hook_scale")[0, :, 0] if cfg.final_norm_type is not None
           else np.ones(cache["hook_embed"].shape[1], np.float32))           # [pos]
    # A norm on the attention's output (Gemma 2/3's ln1_post, OLMo 2's ln1) is linear given its
    # scale, as ln_final is: its weight (and centring) joins the direction per layer, its bias
    # is attention bias, and each layer's heads are divided by its scale.
    post = _attn_out_norm(cfg)
    d_l = np.broadcast_to(d, (cfg.n_layers, d.shape[0]))                     # [L, d_model]
    post_bias = np.zeros((1, cfg.n_layers), np.float32)
    inv_l = inv[:, None]                                                    # [pos, L]
    if post is not None:
        p = {k: np.asarray(v, np.float32) for k, v in model.params["blocks"][post].items()}
        d_l = d_l * p["w"]
        if "b" in p:  # (LayerNorm: centring moves into the direction)
            d_l = d_l - d_l.mean(-1, keepdims=True)
            post_bias = (p["b"] @ d)[None, :] * inv[:, None]
        inv_l = inv[:, None] / get(f"blocks.*.{post}.hook_scale")[:, 0, :, 0].T
    out_dir = np.einsum("lhem,lm->lhe", np.asarray(attn["W_O"], np.float32), d_l)  # [L, H, d_head]
    embed = get("hook_embed")[0]
    if "hook_pos_embed" in cache:
        embed = embed + get("hook_pos_embed")[0]
    parts = dict(
        embed=embed @ d * inv,
        heads=np.einsum("lphe,lhe->plh", get("blocks.*.attn.hook_z")[:, 0], out_dir)
        * inv_l[:, :, None],
        attn_bias=np.einsum("lm,lm->l", np.asarray(attn["b_O"], np.float32), d_l)[None, :] * inv_l
        + post_bias,
        constant=np.broadcast_to(const, inv.shape))
    if not cfg.attn_only:
        parts["mlp"] = np.einsum("lpm,m->pl", get("blocks.*.hook_mlp_out")[:, 0], d) * inv[:, None]
    return parts


def logit_direction(model, answer: int, wrong: Optional[int] = None):
    """(W_U column [d_model], b_U entry) of `answer`, or of answer minus `wrong`."""
    cols = np.asarray([answer] if wrong is None else [answer, wrong], np.int32)
    w, b = map(np.asarray, _unembed_columns(model.params["unembed"], cols))
    return (w[:, 0], b[0]) if wrong is None else (w[:, 0] - w[:, 1], b[0] - b[1])


@quick_jit
def _unembed_columns(unembed: dict, cols: jax.Array):
    # one program: indexed eagerly, W_U[:, cols] and b_U[cols] are six (each one loaded from the
    # compilation cache or compiled in every process)
    return unembed["W_U"][:, cols], unembed["b_U"][cols]


def direct_logit_attribution(model, cache, target: int) -> dict:
    """The last position's logit of `target`, split into embedding, each head [L, H], each
    attention bias [L], each MLP [L] and the constant (norm bias + b_U). Entries sum to the
    logit (before any final soft-cap; not for models with post-norms, whose residual is not a
    sum)."""
    parts = dla_by_position(model, cache, *logit_direction(model, target))
    return {k: v[-1] for k, v in parts.items()}


# ----------------------------------------------------------------------------- logit lens

# Rows of logits [rows, d_vocab] the lens computes per product. A layer at a time, a few positions
# re-read all of W_U per handful of rows (memory-bound); all layers at once, the logits outgrow
# the caches. Measured on SmolLM2, 2 cores: 11 positions 0.33 s a layer at a time, 0.19 s at 8
# layers (88 rows), 0.24 s all 31; 64 positions best at 2 layers (128 rows).
LENS_ROWS = 128


@functools.lru_cache(maxsize=8)
def _lens_fn(cfg, layers_at_once: int):
    """One compiled logit lens per Config: the residual of every layer [L+1, pos, d_model] through
    ln_final and the unembedding, `layers_at_once` layers per product (lax.map over groups)."""
    def one(params, resid, answer, wrong):
        logits = unembed(params, resid[None], context(cfg, None, 1, resid.shape[0]))[0].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        top = logp.argmax(-1)
        a = logits[:, answer]
        return dict(top=top, top_p=jnp.exp(logp.max(-1)), answer_p=jnp.exp(logp[:, answer]),
                    answer_rank=(logits > a[:, None]).sum(-1), diff=a - logits[:, wrong])

    return quick_jit(lambda params, resids, answer, wrong: jax.lax.map(
        lambda r: one(params, r, answer, wrong), resids, batch_size=layers_at_once))


def logit_lens(model, resid, answer: int = 0, wrong: int = 0) -> dict:
    """resid [L+1, pos, d_model] -> top [L+1, pos] (id), top_p, answer_p (probability of
    `answer`), answer_rank (0 = top), diff (logit of answer minus logit of wrong)."""
    out = _lens_fn(model.cfg, max(1, LENS_ROWS // resid.shape[1]))(model.params, resid, answer, wrong)
    return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- analysis

def induction(model, seq_len: int = 20, n_prompts: int = 4, remember: bool = False) -> dict:
    """Induction heads, found as TransformerLens users do: random tokens said twice.

    Returns scores [n_layers, n_heads] (mean attention from the second copy to the token after
    the first occurrence), the best head (layer, head), its pattern [pos, pos] on the first
    prompt, and that prompt's str_tokens. `remember`: keep the result on disk for the next
    process with the same model (`jtlens.core.remembered`; the text plays no part in it).
    """
    limit = model.cfg.position_limit  # (Qwen 1: train_seq_length, under n_ctx)
    seq_len = min(seq_len, ((limit or model.cfg.n_ctx) - 1) // 2)

    def compute() -> dict:
        rep, pattern = induction_patterns(model, seq_len, n_prompts)   # pattern [L, b, H, q, k]
        scores = np.asarray(induction_pattern_scores(pattern, seq_len))
        layer, head = np.unravel_index(int(scores.argmax()), scores.shape)
        return dict(scores=scores, tokens=np.asarray(rep[0]),
                    pattern=np.asarray(pattern[layer, 0, head]))

    bos = (bos_id(model.tokenizer) if model.tokenizer is not None and model.cfg.default_prepend_bos
           else None)
    found = (remembered(("induction", seq_len, n_prompts, bos), model.cfg, model.params, compute)
             if remember else compute())
    layer, head = np.unravel_index(int(found["scores"].argmax()), found["scores"].shape)
    return dict(scores=found["scores"], best=(int(layer), int(head)), seq_len=seq_len,
                threshold=INDUCTION_THRESHOLD, pattern=found["pattern"],
                str_tokens=(to_str_tokens(model.tokenizer, found["tokens"])
                            if model.tokenizer is not None else [str(int(t)) for t in found["tokens"]]))


def _run_bucketed(model, tokens, names):
    """`model.run_with_cache(tokens)` [1, n] with the tokens padded on the right to
    `bucket(n)` positions and the results cut back to n: a causal model's first n positions do
    not see the padding, and texts of similar length then share one compiled program (also
    across processes, through the compilation cache)."""
    n = tokens.shape[1]
    padded = bucket(n, model.cfg.n_ctx)
    if model.cfg.attention_dir != "causal" or padded == n:
        return model.run_with_cache(tokens, names_filter=names)
    tokens = np.asarray(tokens)
    filler = np.full((tokens.shape[0], padded - n), tokens[0, -1], tokens.dtype)
    logits, cache = model.run_with_cache(np.concatenate([tokens, filler], 1), names_filter=names)
    return np.asarray(logits)[:, :n], cache.first_positions(n)


def analyze(model, text: str, *, top_k: int = 5, n_neurons: int = 5, truncate: bool = False,
            capture_all: bool = False, answer: Optional[int] = None, wrong: Optional[int] = None,
            include_bos: bool = False, remember: bool = False) -> Analysis:
    """Run `model` (a HookedTransformer with a tokenizer) on `text` and collect what it does.

    Returns a dict of plain arrays: str_tokens [pos]; n_text_tokens (before any truncation);
    top_ids/top_probs [pos, top_k] (next-token predictions); loss [pos-1]; lens_ids/lens_probs
    [n_layers+1, pos] (logit lens: top token reading each layer's input residual, then the
    final residual, through ln_final+unembed); resid_norm [n_layers+1] (at the last position);
    last_attn [n_layers, n_heads, pos] (the last position's attention); patterns
    [n_layers, n_heads, w, w] for the first w = min(pos, WINDOW) positions; the lens covers the
    last WINDOW positions, from lens_from; dla (direct logit attribution of the top prediction
    at the last position); neurons (per MLP layer the top (neuron, position, activation));
    induction (see `induction`); with `answer` (a token id) the answer's lens and attribution
    at every position (`answer_view`), and with `wrong` too those of answer - wrong; cache when
    capture_all. Summaries of neurons and heads skip the BOS position unless include_bos.
    `remember` keeps what does not depend on the text (the induction probe) on disk for the next
    process (the CLI's default; see `jtlens.core.remembered`).
    """
    if not text or not text.strip():
        raise ValueError("the text is empty: give some words to run the model on")
    cfg = model.cfg
    tokens = model.to_tokens(text, truncate=truncate)
    # How long the text really is, to say how much truncation cut (to_tokens: BOS + the text).
    n_text_tokens = (len(model.tokenizer.encode(text, add_special_tokens=False))
                     + int(cfg.default_prepend_bos))
    names = ["hook_embed", "blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern",
             "blocks.*.attn.hook_z", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    if cfg.positional_embedding_type == "standard":
        names.append("hook_pos_embed")
    if cfg.final_norm_type is not None:
        names.append("ln_final.hook_scale")
    if _attn_out_norm(cfg) is not None:
        names.append(f"blocks.*.{_attn_out_norm(cfg)}.hook_scale")
    if not cfg.attn_only:
        names.append("blocks.*.hook_mlp_out")
    if not (cfg.attn_only or cfg.num_experts):  # (a mixture has no single hidden layer)
        names.append("blocks.*.mlp.hook_post")
    # Saved activations are exactly run_with_cache's: padding changes XLA's summation order.
    logits, cache = (model.run_with_cache(tokens) if capture_all
                     else _run_bucketed(model, tokens, names))
    last = np.asarray(logits, np.float32)[0]                               # [pos, d_vocab]
    probs = np.exp(last - last.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top_ids = np.argsort(-probs, -1)[:, :top_k]
    resid = np.concatenate([np.asarray(cache["blocks.*.hook_resid_pre"])[:, 0],
                            np.asarray(cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"])])  # [L+1, P, D]
    target = int(top_ids[-1, 0])
    start = max(0, resid.shape[1] - WINDOW)              # the lens reads the last WINDOW positions
    lens = logit_lens(model, resid[:, start:], target if answer is None else answer,
                      target if wrong is None else wrong)
    pattern = np.asarray(cache["blocks.*.attn.hook_pattern"])[:, 0]    # [L, H, P, P]
    ids = np.asarray(tokens)[0]
    skip = int(not include_bos and len(ids) > 1 and int(ids[0]) == bos_id(model.tokenizer))
    a: Analysis = dict(
        text=text, model_name=cfg.model_name, str_tokens=model.to_str_tokens(ids),
        tokens=ids, n_text_tokens=max(n_text_tokens, len(ids)), skip=skip, top_ids=top_ids,
        top_probs=np.take_along_axis(probs, top_ids, -1),
        loss=_next_token_loss(last, ids),
        lens_ids=lens["top"], lens_probs=lens["top_p"],
        resid_norm=np.linalg.norm(resid[:, -1], axis=-1),
        lens_from=start, last_attn=np.asarray(pattern[:, :, -1]),
        patterns=np.asarray(pattern[:, :, :WINDOW, :WINDOW]),
        target=target, target_logit=float(last[-1, target]),
        dla=direct_logit_attribution(model, cache, target), neurons=[],
        induction=induction(model, remember=remember))
    if not (cfg.attn_only or cfg.num_experts):
        post = np.asarray(cache["blocks.*.mlp.hook_post"])[:, 0, skip:]      # [L, P - skip, M]
        for layer in post:
            peak = layer.max(0)
            best = np.argsort(-peak)[:n_neurons]
            a["neurons"].append([(int(n), int(layer[:, n].argmax()) + skip, float(peak[n]))
                                 for n in best])
    if answer is not None:
        a["answer_view"] = _answer_view(model, cache, last, lens, answer, wrong)
    a["top_strs"] = to_str_tokens(model.tokenizer, top_ids)
    a["lens_strs"] = to_str_tokens(model.tokenizer, lens["top"])
    a["target_str"] = a["top_strs"][-1][0]
    if capture_all:
        a["cache"] = cache
    return a


def _next_token_loss(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """logits [pos, d_vocab], ids [pos] -> the loss of each next token [pos - 1]."""
    top = logits.max(-1, keepdims=True)
    logsumexp = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:-1, 0]
    return logsumexp - logits[np.arange(len(ids) - 1), ids[1:]]


def _answer_view(model, cache, logits, lens, answer: int, wrong: Optional[int]) -> dict:
    """The answer (and answer - wrong) through the layers and components, at every position
    (`logits` [pos, d_vocab], the first prompt's)."""
    tok = model.tokenizer
    view = dict(answer=answer, answer_str=to_str_tokens(tok, [answer])[0],
                lens_p=lens["answer_p"], lens_rank=lens["answer_rank"],
                logit=logits[:, answer],
                dla=dla_by_position(model, cache, *logit_direction(model, answer)))
    if wrong is not None:
        view.update(wrong=wrong, wrong_str=to_str_tokens(tok, [wrong])[0], lens_diff=lens["diff"],
                    diff=logits[:, answer] - logits[:, wrong],
                    dla_diff=dla_by_position(model, cache, *logit_direction(model, answer, wrong)))
    return view


# ----------------------------------------------------------------------------- text

def _rows(n: int, max_rows: int) -> tuple[list[int], Optional[tuple[int, int]]]:
    """Rows to print and the (first, last) skipped, when there are more than max_rows."""
    if n <= max_rows:
        return list(range(n)), None
    half = max_rows // 2
    return [*range(half), *range(n - half, n)], (half, n - half - 1)


def _top_components(dla: dict, pos: int, k: int = 6) -> list[tuple[float, str]]:
    comps = [(float(v), f"L{l}H{h}") for (l, h), v in np.ndenumerate(dla["heads"][pos])]
    comps += [(float(v), f"MLP{l}") for l, v in enumerate(dla["mlp"][pos] if "mlp" in dla else [])]
    return sorted(comps, key=lambda x: -abs(x[0]))[:k]


def _truncation_note(a: Analysis) -> list[str]:
    n, total = len(a["str_tokens"]), a["n_text_tokens"]
    if total <= n:
        return []
    return [f"The text is {total} tokens; the first {n} (the model's context) were analysed, "
            f"{total - n} cut (--truncate)."]


def summary(a: Analysis, max_rows: int = 12) -> str:
    """A plain-text account of `analyze`'s result (what `jtlens run` prints)."""
    toks, n = a["str_tokens"], len(a["str_tokens"])
    bos_note = " (BOS position left out)" if a["skip"] else ""
    shown = " ".join(repr(t) for t in toks) if n <= 40 else (
        " ".join(repr(t) for t in toks[:20]) + f" ... ({n - 40} more) ... "
        + " ".join(repr(t) for t in toks[-20:]))
    lines = [f"{a['model_name']} on {n} tokens: " + shown,
             *_truncation_note(a), "",
             "Next token after the text: " + ", ".join(
                 f"{s!r} {p:.1%}" for s, p in zip(a["top_strs"][-1], a["top_probs"][-1])), "",
             f"Per-token loss (mean {a['loss'].mean():.3f}) and top prediction per position:"]
    rows, skipped = _rows(n, max_rows)
    for i in rows:
        if skipped and i == skipped[1] + 1:
            lines.append(f"  ... rows {skipped[0]}-{skipped[1]} skipped "
                         f"({skipped[1] - skipped[0] + 1} rows; all in report.html)")
        loss = f"{a['loss'][i]:6.3f}" if i < n - 1 else "     -"
        lines.append(f"  {i:3d} {toks[i]!r:>16} loss->next {loss}   predicts "
                     f"{a['top_strs'][i][0]!r} {a['top_probs'][i][0]:.1%}")
    layers = [f"layer {i}" for i in range(len(a["lens_strs"]) - 1)] + ["final"]
    lines += ["", "Logit lens at the last position (top token reading each layer's input):"]
    lines += [f"  {name:>8}: {s[-1]!r} {p[-1]:.1%}   resid norm {r:.2f}"
              for name, s, p, r in zip(layers, a["lens_strs"], a["lens_probs"], a["resid_norm"])]
    if "answer_view" in a:
        lines += ["", *_answer_lines(a, layers)]
    skip = a["skip"]
    last = a["last_attn"][:, :, skip:]                               # [L, H, P - skip]
    lines += ["", f"Most-attended token from the last position, per head{bos_note}:"]
    for layer, heads in enumerate(last):
        lines.append(f"  L{layer}: " + "  ".join(
            f"H{h} {toks[int(row.argmax()) + skip]!r}@{int(row.argmax()) + skip} {row.max():.2f}"
            for h, row in enumerate(heads)))
    if skip:
        lines.append(f"  (BOS takes {a['last_attn'][:, :, 0].mean():.0%} of the last position's "
                     f"attention on average over heads; --include-bos counts it)")
    if a["neurons"]:
        lines += ["", f"Most active MLP neurons (neuron, where, activation){bos_note}:"]
        lines += [f"  L{layer}: " + "  ".join(f"N{nr} @{toks[pos]!r} {v:.2f}" for nr, pos, v in top)
                  for layer, top in enumerate(a["neurons"])]
    lines += ["", induction_text(a["induction"])]
    lines += ["", f"Direct logit attribution of {a['target_str']!r} (logit {a['target_logit']:.2f}): "
              + ", ".join(f"{name} {v:+.2f}" for v, name in _top_components(
                  {k: np.asarray(v)[None] for k, v in a["dla"].items()}, 0))
              + f", embed {float(a['dla']['embed']):+.2f}"]
    return "\n".join(lines)


def _answer_lines(a: Analysis, layers: list[str]) -> list[str]:
    v = a["answer_view"]
    name = repr(v["answer_str"])
    lines = [f"The answer {name} at the last position: logit {v['logit'][-1]:.2f}"
             + (f", {name} - {v['wrong_str']!r} = {v['diff'][-1]:+.2f}" if "wrong" in v else ""),
             f"  logit lens of {name} (probability, rank; 0 = top)"
             + (f" and of {name} - {v['wrong_str']!r}:" if "wrong" in v else ":")]
    for i, layer in enumerate(layers):
        diff = f"   diff {v['lens_diff'][i, -1]:+.2f}" if "wrong" in v else ""
        lines.append(f"  {layer:>8}: {v['lens_p'][i, -1]:7.2%}  rank {int(v['lens_rank'][i, -1]):6d}{diff}")
    for key, what in (("dla", name), ("dla_diff", f"{name} - {v.get('wrong_str', '')!r}")):
        if key in v:
            lines.append(f"  direct logit attribution of {what}: " + ", ".join(
                f"{c} {x:+.2f}" for x, c in _top_components(v[key], -1)))
    return lines


def induction_text(ind: dict) -> str:
    """One sentence on induction heads that claims a head only when it clears the threshold."""
    ranked = sorted(np.ndenumerate(ind["scores"]), key=lambda x: -x[1])
    top = ", ".join(f"L{l}H{h} {v:.2f}" for (l, h), v in ranked[:4])
    clear = [f"L{l}H{h}" for (l, h), v in ranked if v >= ind["threshold"]]
    head = (f"{len(clear)} head(s) score at least {ind['threshold']} (a clear induction head): "
            + ", ".join(clear[:8]) + ("..." if len(clear) > 8 else "") if clear else
            f"no head scores {ind['threshold']} or more: no clear induction head")
    return (f"Induction heads (attention to the token after the earlier copy, {ind['seq_len']} "
            f"random tokens said twice): {head}. Top scores: {top}.")


# ----------------------------------------------------------------------------- HTML

def _window_note(a: Analysis) -> str:
    start = a["lens_from"]
    return (f" Of the {len(a['str_tokens'])} positions, the last {len(a['str_tokens']) - start} "
            f"(from {start}) are shown." if start else "")


def _esc(s) -> str:
    return html.escape(repr(s))


def _bos_note(a: Analysis) -> str:
    return (" The BOS position is left out (it soaks up attention and activation; "
            "<code>--include-bos</code> keeps it)." if a["skip"] else "")


def _tokens_html(a: Analysis, out: pathlib.Path) -> str:
    toks = a["str_tokens"]
    trunc = "".join(f"<p><b>{html.escape(t)}</b></p>" for t in _truncation_note(a))
    parts = [f"<h1>jtlens: {html.escape(a['model_name'])}</h1>",
             f"<p class=text>{html.escape(a['text'])}</p>{trunc}",
             f"<p>{len(toks)} tokens analysed.</p>",
             "<h2>Tokens and predictions</h2><table><tr><th>pos</th><th>token</th>"
             "<th>loss of next</th><th>top predictions</th></tr>"]
    for i, t in enumerate(toks):
        loss = f"{a['loss'][i]:.3f}" if i < len(toks) - 1 else ""
        preds = ", ".join(f"{_esc(s)} {p:.1%}" for s, p in zip(a["top_strs"][i], a["top_probs"][i]))
        parts.append(f"<tr><td>{i}</td><td class=tok>{_esc(t)}</td><td>{loss}</td><td>{preds}</td></tr>")
    return "".join(parts) + "</table>"


def _lens_html(a: Analysis, out: pathlib.Path) -> str:
    start = a["lens_from"]
    parts = ["<h2>Logit lens</h2><p>Top token reading each layer's input residual (and the final "
             "residual) through ln_final and the unembedding; colour = its probability (white = 0, "
             f"red = 1).{_window_note(a)}</p><table><tr><th></th>"
             + "".join(f"<th>{_esc(t)} ({i})</th>" for i, t in enumerate(a["str_tokens"]) if i >= start)
             + "<th>resid norm (last)</th></tr>"]
    n_rows = len(a["lens_strs"])
    for r in range(n_rows):
        name = "final" if r == n_rows - 1 else f"layer {r}"
        parts.append(f"<tr><th>{name}</th>"
                     + "".join(cell(s, p) for s, p in zip(a["lens_strs"][r], a["lens_probs"][r]))
                     + f"<td>{a['resid_norm'][r]:.2f}</td></tr>")
    return "".join(parts) + "</table>"


def _dla_html(a: Analysis, out: pathlib.Path) -> str:
    dla = a["dla"]
    picture = svg_figure(dla_svgs(dla, f"logit of {a['target_str']!r}"), out / "dla.svg",
                         "direct logit attribution")
    return ("<h2>Direct logit attribution</h2>"
            f"<p>Of the top prediction {_esc(a['target_str'])} at the last position "
            f"(logit {a['target_logit']:.3f}; embedding {float(dla['embed']):+.3f}, "
            f"biases {float(dla['constant']) + float(np.sum(dla['attn_bias'])):+.3f}).</p>"
            + picture)


def _neurons_html(a: Analysis, out: pathlib.Path) -> str:
    if not a["neurons"]:
        return ""
    toks = a["str_tokens"]
    rows = [f"<tr><td>{l}</td><td>" + "; ".join(f"N{n} @ {_esc(toks[p])} ({p}): {v:.2f}"
                                                for n, p, v in top) + "</td></tr>"
            for l, top in enumerate(a["neurons"])]
    return (f"<h2>Most active MLP neurons</h2><p>Per layer, the neurons with the largest activation "
            f"anywhere in the text.{_bos_note(a)}</p><table><tr><th>layer</th>"
            f"<th>neuron @ token: activation</th></tr>{''.join(rows)}</table>")


def _induction_html(a: Analysis, out: pathlib.Path) -> str:
    ind = a["induction"]
    picture = svg_figure(induction_svgs(a), out / "induction.svg", "induction heads")
    stripe = (" The best head's pattern shows the off-diagonal stripe." if
              ind["scores"].max() >= ind["threshold"] else
              " The best head's pattern is drawn for comparison; it shows no clear stripe.")
    return (f"<h2>Induction heads</h2><p>Each head's mean attention from the second copy of "
            f"{ind['seq_len']} random tokens said twice to the token after the same token's "
            f"first occurrence (1 = a perfect induction head; a head spreading its attention "
            f"evenly scores about 1/{ind['seq_len']}). {html.escape(induction_text(ind))}{stripe}</p>"
            + picture)


def _attention_html(a: Analysis, out: pathlib.Path) -> str:
    shown = a["patterns"].shape[-1]
    note = (f"<p>The viewer shows the first {shown} of {len(a['str_tokens'])} positions.</p>"
            if shown < len(a["str_tokens"]) else "")
    return "<h2>Attention</h2>" + note + attention_viewer(a["patterns"], a["str_tokens"][:shown])


def _patching_html(a: Analysis, out: pathlib.Path) -> str:
    return patching_html(a["patching"]) if "patching" in a else ""


def _sae_html(a: Analysis, out: pathlib.Path) -> str:
    return sae_html(a["sae"]) if "sae" in a else ""


def write_report(a: Analysis, out_dir) -> pathlib.Path:
    """Write `report.html` (self-contained) and its SVG figures into `out_dir`; returns the HTML path."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = "".join(section(a, out) for section in SECTIONS)
    path = out / "report.html"
    path.write_text(html_page("jtlens report", body), encoding="utf-8")
    return path


def _heads_html(a: Analysis, out: pathlib.Path) -> str:
    toks, skip = a["str_tokens"], a["skip"]
    last = a["patterns"][:, :, -1]                                   # [L, H, P]
    rows = []
    for layer, heads in enumerate(last):
        cells = []
        for row in heads:
            k = int(row[skip:].argmax()) + skip
            cells.append(f"<td>{html.escape(repr(toks[k]))}@{k} {row[k]:.2f}"
                         + (f" <small>(BOS {row[0]:.2f})</small>" if skip else "") + "</td>")
        rows.append(f"<tr><th>L{layer}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>H{h}</th>" for h in range(last.shape[1]))
    return (f"<h2>Heads</h2><p>The token each head attends to most from the last position, and "
            f"its weight.{_bos_note(a)}</p><table><tr><th></th>{head}</tr>{''.join(rows)}</table>")


def _answer_html(a: Analysis, out: pathlib.Path) -> str:
    if "answer_view" not in a:
        return ""
    v, toks = a["answer_view"], a["str_tokens"]
    name = html.escape(repr(v["answer_str"]))
    wrong = html.escape(repr(v["wrong_str"])) if "wrong" in v else None
    parts = [f"<h2>The answer {name}</h2><p>Logit at the last position {v['logit'][-1]:.3f}"
             + (f"; {name} - {wrong} = {v['diff'][-1]:+.3f}" if wrong else "") + ".</p>"]
    start = a["lens_from"]
    picture = svg_figure(answer_lens_svgs(v, toks[start:], start), out / "answer_lens.svg",
                         "answer logit lens")
    parts.append("<h3>Logit lens of the answer</h3><p>Each layer's residual stream read through "
                 f"ln_final and the unembedding: the probability of {name} at every layer and "
                 "position" + (f", and the logit difference {name} - {wrong}" if wrong else "")
                 + f".{_window_note(a)}</p>" + picture)
    raw = {"dla": repr(v["answer_str"]), "dla_diff": f"{v['answer_str']!r} - {v.get('wrong_str')!r}"}
    for key, what in (("dla", name), ("dla_diff", f"{name} - {wrong}")):
        if key not in v:
            continue
        picture = svg_figure(dla_positions_svgs({k: x[start:] for k, x in v[key].items()},
                                                toks[start:], raw[key], start),
                             out / f"answer_{key}.svg", f"direct logit attribution of {raw[key]}")
        last = ", ".join(f"{c} {x:+.2f}" for x, c in _top_components(v[key], -1))
        parts.append(f"<h3>Direct logit attribution of {what}</h3><p>What each head and MLP "
                     f"writes along {what}'s unembedding direction (through ln_final's scale at "
                     f"that position). At the last position: {html.escape(last)}.</p>"
                     + picture)
    return "".join(parts)


# The report's sections in page order: each (analysis, out folder) -> HTML, writing its SVGs.
SECTIONS = (_tokens_html, _answer_html, _lens_html, _dla_html, _neurons_html, _heads_html,
            _induction_html, _attention_html, _patching_html, _sae_html)
