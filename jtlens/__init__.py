"""jtlens: TransformerLens as pure JAX functions.

    params = jtlens.init_params(cfg, key)
    logits = jtlens.forward(params, tokens, cfg)
    logits, cache = jtlens.forward_with_cache(params, tokens, cfg)   # every hook
"""

from jtlens import grads as grads
from jtlens import masks as masks
from jtlens import probes as probes
from jtlens import sharding as sharding
from jtlens.cache import ActivationCache as ActivationCache
from jtlens.checks import checked as checked
from jtlens.compilation_cache import enable_compilation_cache as enable_compilation_cache
from jtlens.components import lm_cross_entropy_loss as lm_cross_entropy_loss
from jtlens.config import Config as Config
from jtlens.config import HookedTransformerConfig as HookedTransformerConfig
from jtlens.factored_matrix import FactoredMatrix as FactoredMatrix
from jtlens.generation import generate as generate
from jtlens.hooked_encoder import HookedEncoder as HookedEncoder
from jtlens.hooked_sae_transformer import HookedSAETransformer as HookedSAETransformer
from jtlens.hooked_transformer import HookedTransformer as HookedTransformer
from jtlens.hooked_transformer import Output as Output
from jtlens.hooks import HookPoint as HookPoint
from jtlens.hooks import Hooks as Hooks
from jtlens.hooks import get_act_name as get_act_name
from jtlens.kv_cache import KeyValueCache as KeyValueCache
from jtlens.model import forward as forward
from jtlens.model import forward_with_cache as forward_with_cache
from jtlens.model import forward_with_kv as forward_with_kv
from jtlens.model import hook_names as hook_names
from jtlens.params import init_params as init_params
from jtlens.params import param_shapes as param_shapes
from jtlens.sharding import shard_params as shard_params
from jtlens.sparse import SAE as SAE
