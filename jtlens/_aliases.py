"""The short module paths (`jtlens.utils`, `jtlens.patching`, `jtlens.loading`, ...) as names for
the modules in the layer folders.

Each short path is the same module object as its home (`jtlens.utils is jtlens.tl.utils`), not a
copy: `import jtlens.utils`, `from jtlens.patching import get_act_patch_resid_pre`,
`monkeypatch.setattr("jtlens.loading._download", ...)` and `python -m jtlens.conversions` all
reach the real module. They are the paths TransformerLens users know and the ones jtlens had
before its modules moved into layers; code inside jtlens imports the real homes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_CORE = ("config", "params", "hooks", "components", "cache", "cache_analysis", "slice", "kv_cache",
         "checks", "tokens", "weights", "decode_layout", "factored_matrix", "model", "progress",
         "compilation_cache", "encoder_decoder")
_IO = ("conversions", "gguf_models", "loading", "checkpoint_io", "streaming", "sharding")
_EXPERIMENTS = ("grads", "masks", "probes", "steering", "train", "generation", "sampling",
                "head_detector", "evals", "encoder_decoder_generation")
_TL = ("hooked_transformer", "hooked_encoder", "hooked_encoder_decoder", "hook_points",
       "module_views", "utils", "tl_compat", "patching")

# short name (under jtlens.) -> real module; a dotted short name covers its submodules too.
ALIASES = {
    **{m: f"jtlens.core.{m}" for m in _CORE},
    **{m: f"jtlens.io.{m}" for m in _IO},
    **{m: f"jtlens.experiments.{m}" for m in _EXPERIMENTS},
    **{m: f"jtlens.tl.{m}" for m in _TL},
    **{f"patching.{m}": f"jtlens.experiments.patching.{m}"
       for m in ("sweep", "planning", "attribution", "paths", "encoder_decoder")},
    "patching.plots": "jtlens.report.patching_plots",
    "report_figures": "jtlens.report.figures",
    "report_patching": "jtlens.report.patching_section",
    "heatmap": "jtlens.report.heatmap",
    "attention_view": "jtlens.report.attention_view",
    "cli": "jtlens.report.cli",
    # `python -m jtlens.conversions`: the command runs above loading, so it lives with the CLI.
    "conversions.__main__": "jtlens.report.convert_command",
    "sparse": "jtlens.experiments.sparse",
    "hooked_sae_transformer": "jtlens.tl.hooked_sae_transformer",
    "weight_processing": "jtlens.tl.weight_processing",
}


def target(fullname: str):
    """The real module name behind a short path (`jtlens.conversions.gpt2` ->
    `jtlens.io.conversions.gpt2`), or None when `fullname` is not one."""
    parts = fullname.split(".")
    if parts[0] != "jtlens":
        return None
    for n in range(len(parts) - 1, 0, -1):  # the longest short name that prefixes it
        home = ALIASES.get(".".join(parts[1:n + 1]))
        if home:
            return ".".join([home, *parts[n + 1:]])
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a short path and loads it as its real module (the same object)."""

    def find_spec(self, fullname, path=None, target_module=None):
        home = target(fullname)
        if home is None:
            return None
        real = importlib.util.find_spec(home)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=real.origin,
                                              is_package=real.submodule_search_locations is not None)
        spec.loader_state = home
        return spec

    def create_module(self, spec):
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The real module ran when it was imported; the import system has just set its __spec__
        # to the short path's, so put its own back.
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname):
        """For `python -m jtlens.cli` / `python -m jtlens.conversions`: the real module's code."""
        home = target(fullname)
        return importlib.util.find_spec(home).loader.get_code(home)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())


def attribute(name: str):
    """`jtlens.<name>` for a short name not imported yet (module `__getattr__`)."""
    if name not in ALIASES:
        raise AttributeError(f"module 'jtlens' has no attribute {name!r}")
    return importlib.import_module(f"jtlens.{name}")
