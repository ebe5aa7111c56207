"""Loading models: jtlens's own saved format, and Hugging Face checkpoints through `conversions`.

    cfg, params, tokenizer = load("jtlens-tiny")               # the embedded default model
    cfg, params, tokenizer = load("/path/to/hf_folder")        # any supported HF checkpoint
    cfg, params, tokenizer = load("smollm2-135m")              # a GGUF file, or a packaged one
    save_converted("out/", cfg, params, tokenizer)             # -> jtlens_config.json + params.safetensors

Weights are read from safetensors first; `.bin` files only through
`torch.load(weights_only=True)`. No remote code runs unless `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core import weights
from jtlens.io import gguf_models
from jtlens.io.conversions import convert_folder
from jtlens.io.saved_tokenizer import SavedTokenizer
from jtlens.io.native import NATIVE_CONFIG, NATIVE_PARAMS, load_native, save_converted  # noqa: F401
from jtlens.core.config import Config
from jtlens.core.memory import release_freed_memory
from jtlens.core.params import check_shapes, param_shapes, to_device

ASSETS = Path(__file__).parents[1] / "assets"
ALIASES = {"jtlens-tiny": ASSETS / "jtlens-tiny"}
# TransformerLens's short names for common checkpoints -> hub repositories.
HUB_ALIASES = {
    "gpt2-small": "openai-community/gpt2", "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium", "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl", "distilgpt2": "distilbert/distilgpt2",
    **{f"pythia-{s}": f"EleutherAI/pythia-{s}"
       for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "gpt-neo-125M": "EleutherAI/gpt-neo-125M", "opt-125m": "facebook/opt-125m",
    "bert-base-cased": "google-bert/bert-base-cased",
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def load(name_or_path, *, dtype: Optional[str] = None, tokenizer: Any = None,
         trust_remote_code: bool = False, progress: bool = True, mesh: Any = None,
         sharding_rules: Any = None, layer_axis: Optional[str] = None,
         **options) -> tuple[Config, dict, Any]:
    """Load a model -> (cfg, layer-stacked params, tokenizer or None).

    `name_or_path`: "jtlens-tiny", a folder saved by `save_converted`, a Hugging Face folder, or a
    hub name (downloaded with huggingface_hub). `options`: weight-processing steps
    (`weights.DEFAULT_PROCESSING`, TransformerLens's `from_pretrained` defaults, e.g.
    fold_ln=False), Config fields (e.g. n_ctx=512), or config.json keys.
    With a `jax.sharding.Mesh`, params are placed by `jtlens.sharding` (`sharding_rules`,
    `layer_axis` as in `shard_params`), a layer at a time from safetensors checkpoints.
    """
    flags = weights.processing_flags({k: options.pop(k) for k in list(options)
                                      if k in weights.DEFAULT_PROCESSING})
    cfg_overrides, hf_overrides = _split_overrides(options)
    # A GGUF file's conversion is cached already processed with the steps asked for (with
    # Config overrides, unprocessed: they apply before processing).
    steps = {k: False for k in flags} if cfg_overrides else flags

    def process(cfg, params):  # -> (cfg, params, the steps applied)
        return (*_process(cfg, params, steps, {}), _steps(cfg, steps, {}))

    folder = resolve(name_or_path, progress=progress, steps=steps, process=process)
    blocks = None  # the streamed blocks: already processed and on the mesh
    if (folder / NATIVE_CONFIG).exists():
        if hf_overrides:
            raise TypeError(f"unknown option(s) {sorted(hf_overrides)} for a converted jtlens model: "
                            f"overrides must be jtlens.Config fields")
        # A GGUF's conversion cache: written by jtlens alone, atomically, and keyed by the GGUF's
        # size and mtime; hashing its 650 MB again would cost every load 0.4 s.
        cfg, params, done = load_native(folder, verify_contents=not _is_gguf(name_or_path))
        if _is_gguf(name_or_path):  # the cache folder's name is not the model's
            cfg = cfg.replace(model_name=model_name_for(name_or_path))
    else:
        named = lambda c: c.replace(model_name=model_name_for(name_or_path))  # noqa: E731

        def stream(converted: Config):
            from jtlens.io.streaming import LayerStreamer

            c = named(converted).replace(**cfg_overrides)
            return LayerStreamer(c, _steps(c, flags, {}), mesh, sharding_rules, layer_axis,
                                 dtype or c.dtype, progress)

        streamed = mesh is not None and _streamable(folder)
        cfg, params = convert_folder(folder, progress=progress, hf_overrides=hf_overrides,
                                     stream=stream if streamed else None)
        cfg = named(cfg)
        done = {}
        if streamed:
            blocks = params.pop("blocks")
    if cfg_overrides:
        cfg, params = _override(cfg, params, cfg_overrides)
    cfg, params = _process(cfg, params, flags, done)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    if mesh is None:
        params = to_device(params, cfg.dtype)
    else:
        from jtlens.io.sharding import shard_params

        host = {k: jax.tree_util.tree_map(lambda a: np.asarray(a, jnp.dtype(cfg.dtype)), v)
                for k, v in params.items()}  # straight from host into the shards, not via one device
        params = shard_params(host if blocks is None else dict(host, blocks=blocks), cfg, mesh,
                              sharding_rules, layer_axis)
    if tokenizer is None:
        tokenizer = load_tokenizer(folder, trust_remote_code)
    release_freed_memory()  # the host copies of conversion and processing, now on the device
    return cfg, params, tokenizer


def _override(cfg: Config, params: dict, overrides: dict) -> tuple[Config, dict]:
    """(cfg with Config fields replaced, params), refusing changes the params cannot follow."""
    new, params = cfg.replace(**overrides), dict(params)
    if "pos_embed" in params:
        rows = params["pos_embed"]["W_pos"].shape[0]
        if new.n_ctx > rows:
            raise ValueError(f"n_ctx={new.n_ctx} is beyond the {rows} positions this checkpoint "
                             f"learned (W_pos has {rows} rows); pass n_ctx <= {rows}")
        if new.n_ctx < rows:  # a shorter context uses the first n_ctx learned positions
            params["pos_embed"] = {"W_pos": params["pos_embed"]["W_pos"][: new.n_ctx]}
    # Other fields must leave the params' shapes alone (streamed blocks are checked as they come).
    want = param_shapes(new)
    check_shapes(params, want if "blocks" in params else {k: v for k, v in want.items() if k != "blocks"})
    return new, params


def model_name_for(name_or_path) -> str:
    """TransformerLens's `cfg.model_name`: the hub name (or folder) without its organisation."""
    name = str(name_or_path)
    return HUB_ALIASES.get(name, name).rstrip("/").split("/")[-1]


def _split_overrides(overrides: dict) -> tuple[dict, dict]:
    """Keyword options -> (Config fields, Hugging Face config keys). As in TransformerLens, a key
    that is not a Config field overrides the checkpoint's config.json before conversion
    (e.g. activation_function="relu" gives cfg.act_fn == "relu")."""
    fields = set(Config.__dataclass_fields__)
    return ({k: v for k, v in overrides.items() if k in fields},
            {k: v for k, v in overrides.items() if k not in fields})


def load_no_processing(name_or_path, **kwargs) -> tuple[Config, dict, Any]:
    """`load` with every weight-processing step off: the checkpoint's own numerics."""
    return load(name_or_path, **{**weights.NO_PROCESSING, **kwargs})


def default_processing() -> dict:
    """The processing `load` applies by default (TransformerLens's from_pretrained)."""
    return dict(weights.DEFAULT_PROCESSING)


def _is_gguf(name_or_path) -> bool:
    return str(name_or_path) in gguf_models.PACKAGED or str(name_or_path).endswith(".gguf")


def resolve(name_or_path, progress: bool = True, steps: Optional[dict] = None,
            process: Optional[Callable] = None) -> Path:
    """The local folder for an alias, a path, or a hub name (downloaded on first use). A GGUF
    file (or a packaged GGUF alias such as "smollm2-135m") resolves to its cached conversion
    (with `steps`/`process`: its processed params, see `gguf_models.converted`)."""
    if str(name_or_path) in gguf_models.PACKAGED:
        return gguf_models.converted(gguf_models.packaged(str(name_or_path)), progress, steps, process)
    if str(name_or_path).endswith(".gguf"):
        if not Path(name_or_path).expanduser().is_file():
            raise FileNotFoundError(f"{name_or_path}: no such GGUF file")
        return gguf_models.converted(name_or_path, progress, steps, process)
    if str(name_or_path) in ALIASES:
        folder = ALIASES[str(name_or_path)]
        if not (folder / NATIVE_CONFIG).exists():
            raise FileNotFoundError(f"{name_or_path}: the embedded model is missing from {folder}; "
                                    f"reinstall jtlens or run scripts/train_tiny.py")
        return folder
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{name_or_path} is a file; pass the folder that holds the checkpoint "
                         f"(or a .gguf file)")
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: no such folder")
    return _download(HUB_ALIASES.get(str(name_or_path), str(name_or_path)))


def _download(repo_id: str) -> Path:
    """Fetch config, tokenizer and safetensors weights; `.bin` weights only for a repository
    without safetensors (a pickle is the fallback, never the first choice)."""
    from huggingface_hub import snapshot_download

    common = ["*.json", "*.model", "*.txt", "tokenizer*"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=common + ["*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=common + ["*.bin"]))
        return folder
    except Exception as err:  # network, auth or unknown repo: say what was tried
        detail = (str(err).strip().splitlines() or [""])[0]
        raise OSError(f"could not fetch {repo_id!r} from the Hugging Face hub (offline, a typo, or "
                      f"a gated repository?); pass a local folder, or 'jtlens-tiny' for the "
                      f"embedded model. {type(err).__name__}: {detail}") from err


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The folder's Hugging Face tokenizer, or None when it has none."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
    if not any((folder / n).exists() for n in names):
        return None
    if _generic_fast_tokenizer(folder):
        # What jtlens saves for GGUF models: no model-specific class to pick, and importing
        # transformers costs several times the load itself.
        return SavedTokenizer(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)


def _generic_fast_tokenizer(folder: Path) -> bool:
    """Whether the folder holds a plain `tokenizer.json` saved by the generic fast class."""
    try:
        cls = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return False
    return (folder / "tokenizer.json").is_file() and cls in ("TokenizersBackend", "PreTrainedTokenizerFast")


# ----------------------------------------------------------------------------- processing
def _process(cfg: Config, params: dict, flags: dict, done: dict) -> tuple[Config, dict]:
    """Apply the requested steps not applied yet -> (the Config they imply, processed params)."""
    undone = [k for k, v in flags.items() if done.get(k) and not v]
    if undone:
        warnings.warn(f"this saved model already has {undone} applied; they cannot be undone",
                      stacklevel=3)
    todo = _steps(cfg, flags, done)
    return weights.processed_config(cfg, **todo), weights.process(params, cfg, **todo)


def _steps(cfg: Config, flags: dict, done: dict) -> dict:
    """The steps still to apply. Like TransformerLens's from_pretrained, soft-capped logits skip
    center_unembed: the cap is not shift-invariant, so centring would change the log-probs."""
    if cfg.post_ln or cfg.cross_attention:
        # TransformerLens's HookedEncoder and HookedEncoderDecoder process no weights; neither do we.
        return {k: False for k in flags}
    todo = {k: v and not done.get(k) for k, v in flags.items()}
    if cfg.output_logits_soft_cap > 0:
        todo["center_unembed"] = False
    return todo


def _streamable(folder: Path) -> bool:
    """Whether the checkpoint can be read a tensor at a time (safetensors); a PyTorch pickle
    loads whole, and is then sharded (with a warning: host memory holds the whole model)."""
    from jtlens.io.conversions.checkpoint import checkpoint_files

    if all(f.suffix == ".safetensors" for f in checkpoint_files(folder)):
        return True
    warnings.warn(f"{folder}: .bin weights load whole before they are sharded; convert them to "
                  f"safetensors to stream them onto the mesh", stacklevel=3)
    return False
