"""Activation patching: TransformerLens's `patching` API as compiled sweeps, and beyond.

- `get_act_patch_*`, `generic_activation_patch`: TransformerLens's functions, names and shapes.
- `activation_sweep`: the pure core (params, cfg, tokens, clean activations, metric).
- `corrupted_tokens`, `per_layer_template`, `clean_activation`, `plan`: the inputs and chunk plan
  every sweep shares (`jtlens.patching.planning`).
- `attribution_patch`: gradient-based estimates of the same sweeps (one forward + backward).
- `path_patch`: a sender head's effect through chosen receivers only.
"""

from jtlens.experiments.patching import attribution, paths, planning, sweep  # noqa: F401  (jtlens.patching.sweep, ...)
from jtlens.experiments.patching.planning import (  # noqa: F401
    Plan, clean_activation, corrupted_tokens, default_chunk_size, metric_positions, per_layer_template, plan)
from jtlens.experiments.patching.sweep import (  # noqa: F401
    activation_sweep, corrupted_residuals, layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter, layer_head_pos_pattern_patch_setter, layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter, layer_pos_patch_setter, map_rows, run_from_layer)
from jtlens.tl.patching.transformer_lens_api import (  # noqa: F401
    generic_activation_patch, get_act_patch_attn_head_all_pos_every, get_act_patch_attn_head_by_pos_every,
    get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_pattern_all_pos,
    get_act_patch_attn_head_pattern_by_pos, get_act_patch_attn_head_pattern_dest_src_pos,
    get_act_patch_attn_head_q_all_pos, get_act_patch_attn_head_q_by_pos, get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_v_by_pos, get_act_patch_attn_out, get_act_patch_block_every, get_act_patch_mlp_out,
    get_act_patch_resid_mid, get_act_patch_resid_pre)
from jtlens.experiments.patching.attribution import attribution_patch, attribution_sweep  # noqa: F401
from jtlens.experiments.patching.paths import path_patch  # noqa: F401
