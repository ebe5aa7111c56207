"""The `jtlens` command.

    jtlens run "The cat sat on the mat" [--model NAME_OR_DIR] [--out DIR] [--save-activations]
    jtlens patch --clean "..." --corrupted "..." --answer " Paris" --wrong " Rome"

Bad input (empty text, text past the context, unknown model) is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

DEFAULT_MODEL = "jtlens-tiny"


class UsageError(Exception):
    """A problem with the user's input, reported as one line."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().strip("'\"") or type(err).__name__
    return text.splitlines()[0]


def load_model(name: str):
    """`HookedTransformer.from_pretrained(name)`, with any failure as a UsageError."""
    from jtlens.hooked_transformer import HookedTransformer

    print(f"loading {name} ...", file=sys.stderr, flush=True)
    try:
        return HookedTransformer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model argument
        raise UsageError(f"cannot load model {name!r}: {_first_line(err)}") from None


def _check_text(text: str, what: str = "text") -> str:
    if not text or not text.strip():
        raise UsageError(f"the {what} is empty: give some words, e.g. jtlens run \"The cat sat\"")
    return text


def _tokens(model, text: str, truncate: bool):
    try:
        return model.to_tokens(text, truncate=truncate)
    except ValueError as err:
        raise UsageError(f"{_first_line(err)} (or pass --truncate)") from None


def cmd_run(args) -> int:
    from jtlens import report

    text = _check_text(args.text)
    model = load_model(args.model)
    _tokens(model, text, args.truncate)
    a = report.analyze(model, text, top_k=args.top_k, truncate=args.truncate,
                       capture_all=args.save_activations)
    print(report.summary(a))
    path = report.write_report(a, args.out)
    if args.save_activations:
        acts = {k: np.asarray(v) for k, v in a["cache"].items()}
        np.savez_compressed(path.parent / "activations.npz", **acts)
        print(f"\n{len(acts)} activations (TransformerLens hook names) -> "
              f"{path.parent / 'activations.npz'}")
    print(f"\nReport: {path}")
    return 0


def cmd_patch(args) -> int:
    import jax.numpy as jnp

    from jtlens import patching
    from jtlens.heatmap import heatmap_figure, save_png

    clean_text = _check_text(args.clean, "clean prompt")
    corrupted_text = _check_text(args.corrupted, "corrupted prompt")
    model = load_model(args.model)
    clean, corrupted = _tokens(model, clean_text, False), _tokens(model, corrupted_text, False)
    if clean.shape != corrupted.shape:
        raise UsageError(f"the clean and corrupted prompts are {clean.shape[1]} and "
                         f"{corrupted.shape[1]} tokens; patching needs the same length")
    try:
        answer, wrong = model.to_single_token(args.answer), model.to_single_token(args.wrong)
    except ValueError as err:
        raise UsageError(f"{_first_line(err)}") from None

    def logit_diff(logits):
        return logits[0, -1, answer] - logits[0, -1, wrong]

    clean_logits, clean_cache = model.run_with_cache(clean)
    clean_diff, corrupted_diff = float(logit_diff(clean_logits)), float(logit_diff(model(corrupted)))
    span = clean_diff - corrupted_diff
    if abs(span) < 1e-6:
        raise UsageError("the clean and corrupted prompts give the same logit difference; "
                         "nothing to patch")

    def metric(logits):  # 0 = corrupted behaviour, 1 = clean behaviour
        return (logit_diff(logits) - corrupted_diff) / span

    resid = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    toks = model.to_str_tokens(clean[0])
    labels = [f"{i} {t!r}" for i, t in enumerate(toks)]
    save_png(heatmap_figure(np.asarray(resid), title="resid_pre patching", xlabel="position",
                            ylabel="layer", label="1 = clean, 0 = corrupted", col_labels=labels),
             out / "patch_resid_pre.png")
    save_png(heatmap_figure(np.asarray(heads), title="head output patching", xlabel="head",
                            ylabel="layer", label="1 = clean, 0 = corrupted"),
             out / "patch_heads.png")
    result = dict(clean=clean_text, corrupted=corrupted_text, answer=args.answer, wrong=args.wrong,
                  clean_logit_diff=clean_diff, corrupted_logit_diff=corrupted_diff,
                  metric="(logit_diff - corrupted) / (clean - corrupted)", tokens=toks,
                  resid_pre=np.asarray(resid).tolist(), attn_head_out=np.asarray(heads).tolist())
    (out / "patching.json").write_text(json.dumps(result, indent=1))
    best = np.unravel_index(int(jnp.argmax(heads)), heads.shape)
    print(f"logit diff {args.answer!r} - {args.wrong!r}: clean {clean_diff:.3f}, "
          f"corrupted {corrupted_diff:.3f}")
    print(f"head whose clean output restores the most: L{best[0]}H{best[1]} "
          f"({float(heads[best]):.2f})")
    print(f"Patching results: {out / 'patching.json'}, {out / 'patch_resid_pre.png'}, "
          f"{out / 'patch_heads.png'}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="jtlens", description="Look inside a transformer.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a model on a text and show everything it does")
    run.add_argument("text")
    run.add_argument("--model", default=DEFAULT_MODEL, help="name, alias or local folder")
    run.add_argument("--out", default="jtlens-report", help="folder for report.html and PNGs")
    run.add_argument("--save-activations", action="store_true",
                     help="also save every hook activation to activations.npz")
    run.add_argument("--truncate", action="store_true", help="cut text longer than the context")
    run.add_argument("--top-k", type=int, default=5)
    run.set_defaults(func=cmd_run)
    patch = sub.add_parser("patch", help="activation patching: residual and head sweeps")
    patch.add_argument("--clean", required=True)
    patch.add_argument("--corrupted", required=True)
    patch.add_argument("--answer", required=True, help="the clean answer token, e.g. ' Paris'")
    patch.add_argument("--wrong", required=True, help="the corrupted answer token, e.g. ' Rome'")
    patch.add_argument("--model", default=DEFAULT_MODEL)
    patch.add_argument("--out", default="jtlens-report/patching")
    patch.set_defaults(func=cmd_patch)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"jtlens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
