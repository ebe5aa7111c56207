"""jtlens: TransformerLens as pure JAX functions.

    params = jtlens.init_params(cfg, key)
    logits = jtlens.forward(params, tokens, cfg)
    logits, cache = jtlens.forward_with_cache(params, tokens, cfg)   # every hook

The package's folders are its layers, each importing only the ones below it (`lint-imports`
checks it): `core` (the forward), `io` (checkpoints -> params), `experiments` (functions of
params and cfg), `tl` (TransformerLens's object API), `report` (figures, the report, the CLI)
and, beside it, `torch` (the same API answering in torch tensors, opt-in: `jtlens.torch`).
The short paths `jtlens.utils`, `jtlens.patching`, `jtlens.loading`, ... name the same modules
(see `jtlens._aliases`).
"""

from jtlens import _aliases

_aliases.install()

from jtlens.core.cache import ActivationCache as ActivationCache  # noqa: E402
from jtlens.core.checks import checked as checked  # noqa: E402
from jtlens.core.compilation_cache import enable_compilation_cache as enable_compilation_cache  # noqa: E402
from jtlens.core.components import lm_cross_entropy_loss as lm_cross_entropy_loss  # noqa: E402
from jtlens.core.config import Config as Config  # noqa: E402
from jtlens.core.config import HookedTransformerConfig as HookedTransformerConfig  # noqa: E402
from jtlens.core.factored_matrix import FactoredMatrix as FactoredMatrix  # noqa: E402
from jtlens.core.hooks import HookPoint as HookPoint  # noqa: E402
from jtlens.core.hooks import Hooks as Hooks  # noqa: E402
from jtlens.core.hooks import get_act_name as get_act_name  # noqa: E402
from jtlens.core.kv_cache import KeyValueCache as KeyValueCache  # noqa: E402
from jtlens.core.forward import forward as forward  # noqa: E402
from jtlens.core.forward import forward_with_cache as forward_with_cache  # noqa: E402
from jtlens.core.forward import forward_with_kv as forward_with_kv  # noqa: E402
from jtlens.core.encoder_decoder import encoder_decoder_forward as encoder_decoder_forward  # noqa: E402
from jtlens.core.encoder_decoder import (  # noqa: E402
    encoder_decoder_forward_with_cache as encoder_decoder_forward_with_cache)
from jtlens.core.hook_catalogue import hook_names as hook_names  # noqa: E402
from jtlens.core.params import init_params as init_params  # noqa: E402
from jtlens.core.params import param_shapes as param_shapes  # noqa: E402
from jtlens.experiments import grads as grads  # noqa: E402
from jtlens.experiments import masks as masks  # noqa: E402
from jtlens.experiments import probes as probes  # noqa: E402
from jtlens.experiments.generation import generate as generate  # noqa: E402
from jtlens.experiments.sparse import SAE as SAE  # noqa: E402
from jtlens.io import sharding as sharding  # noqa: E402
from jtlens.io.sharding import shard_params as shard_params  # noqa: E402
from jtlens.tl.hooked_encoder import HookedEncoder as HookedEncoder  # noqa: E402
from jtlens.tl.hooked_encoder_decoder import HookedEncoderDecoder as HookedEncoderDecoder  # noqa: E402
from jtlens.tl.hooked_sae_transformer import HookedSAETransformer as HookedSAETransformer  # noqa: E402
from jtlens.tl.hooked_transformer import HookedTransformer as HookedTransformer  # noqa: E402
from jtlens.tl.hooked_transformer import Output as Output  # noqa: E402


def __getattr__(name):
    return _aliases.attribute(name)
