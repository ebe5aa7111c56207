"""`python -m jtlens.conversions SOURCE OUT [--no-processing] [--overwrite]` (`python -m
conversions` in a checkout): convert a Hugging Face checkpoint (folder or hub name) or a GGUF file
into jtlens's format (jtlens_config.json + params.safetensors + tokenizer + jtlens_manifest.json,
written beside OUT and renamed into place). The command sits above `jtlens.loading`, in the layer of
the commands; `jtlens._aliases` maps `jtlens.conversions.__main__` here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jtlens.core import weights
from jtlens.io import loading
from jtlens.io.checkpoint_io import check_destination


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jtlens.conversions", description=__doc__)
    ap.add_argument("source", help="Hugging Face folder, hub name, .gguf file or smollm2-135m")
    ap.add_argument("out", help="folder to write")
    ap.add_argument("--no-processing", action="store_true",
                    help="keep the checkpoint's numerics (no fold_ln / centring / bias folding)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="store the params in this dtype (default: float32)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace OUT if it is a non-empty folder (it is swapped in whole at the end)")
    args = ap.parse_args(argv)
    flags = dict(weights.NO_PROCESSING if args.no_processing else weights.DEFAULT_PROCESSING)
    try:
        check_destination(Path(args.out), args.overwrite)  # before the slow part
        cfg, params, tokenizer = loading.load(args.source, dtype=args.dtype, **flags)
        folder = loading.save_converted(args.out, cfg, params, tokenizer, processing=flags,
                                        overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, always
        return 1
    print(f"{cfg.original_architecture} ({cfg.n_layers} layers, d_model {cfg.d_model}) -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
