"""The functional core of activation patching: sweeps over (params, cfg, tokens, clean
activations, metric) compiled as one program.

sweep (`activation_sweep`, the patch setters), planning (corrupted inputs, per-layer
templates, chunk plans), attribution (gradient estimates of the same sweeps), paths (path
patching). TransformerLens's `get_act_patch_*` wrappers, which take a model, are in
`jtlens.tl.patching` (`jtlens.patching`).
"""
