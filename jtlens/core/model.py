"""`jtlens.model`: the forward's public names in one namespace, as before the forward was split
into pieces (embed, attention, MLP, norms, blocks, unembed), engine (one pass through them),
hook_catalogue (the hook names a config has) and forward (the entry points).
"""

from jtlens.core.engine import run_model  # noqa: F401
from jtlens.core.forward import context, forward, forward_with_cache, forward_with_kv  # noqa: F401
from jtlens.core.hook_catalogue import hook_catalogue, hook_names  # noqa: F401
from jtlens.core.pieces import (  # noqa: F401
    Ctx, KVSlots, attention, attention_inputs, block, embed, encoder_embed, final_norm, mlm_head, mlp,
    norm, position_embedding, post_ln_block, run_blocks, unembed)
