"""`python -m jtlens.conversions SOURCE OUT [--no-processing]` (`python -m conversions` in a
checkout): convert a Hugging Face checkpoint (folder or hub name) or a GGUF file into jtlens's
format (jtlens_config.json + params.msgpack + tokenizer). The command sits above `jtlens.loading`."""

from __future__ import annotations

import argparse
import sys

from jtlens import loading, weights


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jtlens.conversions", description=__doc__)
    ap.add_argument("source", help="Hugging Face folder, hub name, .gguf file or smollm2-135m")
    ap.add_argument("out", help="folder to write")
    ap.add_argument("--no-processing", action="store_true",
                    help="keep the checkpoint's numerics (no fold_ln / centring / bias folding)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="store the params in this dtype (default: float32)")
    args = ap.parse_args(argv)
    flags = dict(weights.NO_PROCESSING if args.no_processing else weights.DEFAULT_PROCESSING)
    try:
        cfg, params, tokenizer = loading.load(args.source, dtype=args.dtype, **flags)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    folder = loading.save_converted(args.out, cfg, params, tokenizer, processing=flags)
    print(f"{cfg.original_architecture} ({cfg.n_layers} layers, d_model {cfg.d_model}) -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
