"""Sharded params (jtlens.sharding) on 8 forced host devices give one device's numbers
(forward, cache, hooks, sweeps, attribution, gradients and greedy generation).

Each check runs in a subprocess: the device count is fixed when JAX starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jtlens
from jtlens import sharding

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is tests/io/...)


def run_on_host_devices(code: str, n: int = 8, timeout: int = 600) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


COMMON = """
import jax, numpy as np, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
import jtlens
from jtlens import patching as jp
from jtlens.sharding import make_mesh, param_specs, to_host

def rel(a, b, scale=None):
    # max |a - b| over max |b| (or `scale`); -inf (masked attention scores) must match
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(b)
    assert (a[~finite] == b[~finite]).all()
    a, b = a[finite], b[finite]
    if not b.size:
        return 0.0
    return float(np.abs(a - b).max() / max(scale or np.abs(b).max(), 1e-30))

def close(a, b, what, tol=1e-5):
    # each leaf within tol relative to its largest reference value; gradients relative to the
    # largest of their whole tree (the gradient of b_K is zero up to rounding)
    xs, ys = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(xs) == len(ys), what
    scale = max(float(np.abs(np.asarray(y)).max()) for y in ys) if "grads" in what[-1] else None
    for x, y in zip(xs, ys):
        assert np.shape(x) == np.shape(y), (what, np.shape(x), np.shape(y))
        assert rel(x, y, scale) <= tol, (what, rel(x, y, scale))

LLAMA = jtlens.Config(n_layers=2, d_model=32, n_heads=8, d_head=4, d_mlp=64, n_ctx=16, d_vocab=64,
                      act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                      gated_mlp=True, n_key_value_heads=2, initializer_range=0.2)
T5 = jtlens.Config(n_layers=2, d_model=32, n_heads=8, d_head=4, d_mlp=64, n_ctx=16, d_vocab=64,
                   act_fn="gelu_new", gated_mlp=True, normalization_type="RMS", use_attn_scale=False,
                   positional_embedding_type="relative_positional_bias",
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   cross_attention=True, initializer_range=0.2)
GPT2 = jtlens.Config(n_layers=2, d_model=32, n_heads=8, d_head=4, d_mlp=64, n_ctx=16, d_vocab=64,
                     act_fn="gelu_new", normalization_type="LN", initializer_range=0.2)
MESHES = [(1, 8), (2, 4), (8, 1)]
rng = np.random.default_rng(0)
clean, corrupted = rng.integers(0, 64, (2, 4, 6))
metric = lambda l: (l[:, -1, 3] - l[:, -1, 7]).mean()
"""

PARITY = COMMON + """
def everything(model, mesh):
    cfg = model.cfg
    out = {"logits": model(clean)}
    _, cache = model.run_with_cache(clean)
    out["cache"] = to_host(cache)
    delta = jnp.ones((cfg.n_layers, 1, 1, cfg.d_model)) * 0.1
    hooks = jtlens.Hooks(patch={"blocks.0.hook_resid_post": (cache["blocks.0.hook_resid_post"], None)},
                         add={"blocks.*.hook_resid_mid": delta},
                         fns={"blocks.1.attn.hook_z": lambda z, hook: z * 0.5})
    out["hooked"] = jax.jit(jtlens.forward, static_argnames="cfg")(model.params, corrupted, cfg=cfg, hooks=hooks)
    kw = dict(progress=False, chunk_size=8, sharding=mesh)
    out["heads"] = jp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric, **kw)
    out["resid"] = jp.get_act_patch_resid_pre(model, corrupted, cache, metric, **kw)
    out["attribution"] = jp.attribution_patch(model, corrupted, cache, metric, jp.get_act_patch_attn_head_out_all_pos)
    value, grads = jtlens.grads.grad_cache(model.params, cfg, jnp.asarray(corrupted), metric)
    out["grads"] = (value, to_host(grads))
    pgrads = jax.grad(lambda p: jtlens.forward(p, corrupted, cfg, return_type="loss"))(model.params)
    out["param_grads"] = to_host(pgrads)
    out["generate"] = jtlens.generate(model.params, cfg, jnp.asarray(clean), 6, do_sample=False,
                                      stop_at_eos=False)  # greedy tokens: equal, not close
    return out

def everything_encoder_decoder(model, mesh):
    # the same checks on a T5: encoder input `clean` / `corrupted`, decoder input `decoder`
    from jtlens.core.encoder_decoder import encoder_decoder_forward
    from jtlens.experiments.encoder_decoder_generation import generate_encoder_decoder
    from jtlens.patching.encoder_decoder import encoder_decoder_position_sweep
    cfg, decoder = model.cfg, clean[:, :4]
    out = {"logits": model(clean, decoder_input=decoder)}
    _, cache = model.run_with_cache(clean, decoder_input=decoder)
    out["cache"] = to_host(cache)
    delta = jnp.ones((cfg.n_layers, 1, 1, cfg.d_model)) * 0.1
    hooks = jtlens.Hooks(patch={"encoder.0.hook_resid_post": (cache["encoder.0.hook_resid_post"], None)},
                         add={"decoder.*.hook_resid_mid_cross": delta},
                         fns={"decoder.1.cross_attn.hook_z": lambda z, hook: z * 0.5})
    out["hooked"] = jax.jit(encoder_decoder_forward, static_argnames="cfg")(
        model.params, corrupted, decoder, cfg=cfg, hooks=hooks)
    for hook in ("encoder.*.hook_resid_pre", "decoder.*.cross_attn.hook_z"):
        out[hook] = encoder_decoder_position_sweep(model.params, cfg, corrupted, decoder, hook,
                                                   cache[hook], metric, chunk_size=8, progress=False)
    value, grads = jtlens.grads.grad_cache(model.params, cfg, jnp.asarray(corrupted), metric,
                                           decoder_tokens=decoder)
    out["grads"] = (value, to_host(grads))
    def loss(p):
        logits = encoder_decoder_forward(p, corrupted, decoder, cfg)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), decoder[:, 1:, None], -1).mean()
    out["param_grads"] = to_host(jax.grad(loss)(model.params))
    out["generate"] = generate_encoder_decoder(model.params, cfg, jnp.asarray(clean), 6,
                                               decoder_start_token_id=0)  # greedy: equal tokens
    return out

for cfg, meshes in CASES:
    params = jtlens.init_params(cfg, jax.random.PRNGKey(1))
    Model, run = ((jtlens.HookedEncoderDecoder, everything_encoder_decoder) if cfg.cross_attention
                  else (jtlens.HookedTransformer, everything))
    want = run(Model(cfg, params), None)
    for shape in meshes:
        mesh = make_mesh(*shape)
        sharded = jtlens.shard_params(params, cfg, mesh)
        got = run(Model(cfg, sharded), mesh)
        for k in want:
            close(got[k], want[k], (cfg.normalization_type, shape, k))
        # params really are split: each device holds 1/|model| of every weight split over "model"
        specs = param_specs(params, mesh)
        n_model = mesh.shape["model"]
        for leaf, spec in zip(jax.tree_util.tree_leaves(sharded),
                              jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
            frac = 1 / n_model if "model" in tuple(spec) else 1.0
            for shard in leaf.addressable_shards:
                assert shard.data.size == leaf.size * frac, (spec, shard.data.shape, leaf.shape)
        attn = sharded["blocks"]["attn"]
        assert attn["W_Q"].addressable_shards[0].data.shape[1] == 8 // n_model
        assert sharded["blocks"]["mlp"]["W_in"].addressable_shards[0].data.shape[2] == 64 // n_model
        if cfg.cross_attention:  # the encoder and the cross-attention split like the decoder
            enc = sharded["encoder"]["blocks"]
            for W in (sharded["blocks"]["cross_attn"]["W_K"], enc["attn"]["W_Q"], enc["attn"]["W_O"]):
                assert W.addressable_shards[0].data.shape[1] == 8 // n_model
            assert enc["mlp"]["W_gate"].addressable_shards[0].data.shape[2] == 64 // n_model
        if cfg is LLAMA and n_model > 2:  # 2 key/value heads do not divide 4 or 8: replicated
            assert attn["W_K"].sharding.is_fully_replicated, attn["W_K"].sharding
        print(cfg.normalization_type, shape, "ok", flush=True)
print("PARITY OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("cfg, meshes", [("LLAMA", [(1, 8), (2, 4), (8, 1)]), ("GPT2", [(2, 4)]),
                                         ("T5", [(2, 4)])],
                         ids=["gqa-1x8-2x4-8x1", "gpt2-2x4", "t5-2x4"])
def test_meshes_give_one_devices_numbers_and_split_the_weights(cfg, meshes):
    # LLAMA: grouped-query (2 key/value heads), rotary, RMS, gated; GPT2: LayerNorm, absolute
    # positions, every bias; T5: an encoder-decoder (relative position bias, cross-attention).
    # One process per config: the one-device reference is computed once.
    out = run_on_host_devices(PARITY.replace("for cfg, meshes in CASES:",
                                             f"for cfg, meshes in [({cfg}, {meshes})]:"), timeout=900)
    assert "PARITY OK" in out, out


def test_default_rules_split_experts_over_expert_axis():
    shapes = {"blocks": {"mlp": {"W_router": (2, 8, 4), "experts": {
        "W_in": (2, 4, 8, 12), "W_gate": (2, 4, 8, 12), "W_out": (2, 4, 12, 8),
        "b_in": (2, 4, 12), "b_gate": (2, 4, 12), "b_out": (2, 4, 8)},  # (GPT-OSS's biases)
        "shared_expert": {"W_in": (2, 8, 16), "W_gate": (2, 8, 16), "W_out": (2, 16, 8)},
        "W_shared_expert_gate": (2, 8, 1)},  # (Qwen2-MoE)
        "attn": {"sinks": (2, 4)}}}
    fake = type("FakeMesh", (), {"shape": {"data": 1, "expert": 2, "model": 4}})()
    specs = sharding.param_specs(shapes, fake)["blocks"]["mlp"]
    assert sharding.param_specs(shapes, fake)["blocks"]["attn"]["sinks"] == P(None, "model")
    assert specs["experts"]["b_in"] == specs["experts"]["b_gate"] == P(None, "expert", "model")
    assert specs["experts"]["b_out"] == P(None, "expert", None)
    assert specs["experts"]["W_in"] == P(None, "expert", None, "model")
    assert specs["experts"]["W_gate"] == P(None, "expert", None, "model")
    assert specs["experts"]["W_out"] == P(None, "expert", "model", None)
    assert specs["W_router"] == specs["W_shared_expert_gate"] == P(None, None, None)
    assert specs["shared_expert"]["W_in"] == specs["shared_expert"]["W_gate"] == P(None, None, "model")
    assert specs["shared_expert"]["W_out"] == P(None, "model", None)
    no_expert_axis = type("FakeMesh", (), {"shape": {"data": 2, "model": 4}})()
    assert sharding.param_specs(shapes, no_expert_axis)["blocks"]["mlp"]["experts"]["W_in"] == \
        P(None, None, None, "model")  # without the axis the experts stay whole


def test_default_rules_split_heads_mlp_and_vocabulary_over_model():
    cfg = jtlens.Config(n_layers=2, d_model=8, n_heads=4, d_head=2, d_mlp=12, n_ctx=8, d_vocab=10,
                        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                        gated_mlp=True, n_key_value_heads=2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    fake = type("FakeMesh", (), {"shape": {"data": 2, "model": 4}})()  # specs only read .shape
    specs = sharding.param_specs(jtlens.param_shapes(cfg), fake)
    assert specs["blocks"]["attn"]["W_Q"] == P(None, "model", None, None)
    assert specs["blocks"]["attn"]["W_K"] == P(None, None, None, None)  # 2 kv heads over 4: whole
    assert specs["blocks"]["mlp"]["W_gate"] == P(None, None, "model")
    assert specs["embed"]["W_E"] == P(None, "model")  # a vocabulary of 10 does not split 4 ways
    assert specs["unembed"]["W_U"] == P("model", None)
    assert specs["unembed"]["b_U"] == P(None)
    assert specs["ln_final"]["w"] == P(None)
    fsdp = sharding.param_specs(jtlens.param_shapes(cfg), fake, layer_axis="data")
    assert fsdp["blocks"]["attn"]["W_Q"] == P("data", "model", None, None)
    assert fsdp["blocks"]["ln1"]["w"] == P("data", None)
    custom = sharding.param_specs(jtlens.param_shapes(cfg), fake,
                                  rules={"blocks.mlp.W_*": P(None, "model", None)})
    assert custom["blocks"]["mlp"]["W_in"] == P(None, "model", None)  # the caller's rule wins
    with pytest.raises(ValueError, match="layer_axis"):
        sharding.param_specs(jtlens.param_shapes(cfg), mesh, layer_axis="pipeline")
    with pytest.raises(ValueError, match="has 3 axes"):
        sharding.param_specs(jtlens.param_shapes(cfg), fake, rules=[("ln_final.w", P(None, None, None))])


def test_default_rules_split_an_encoder_decoder_like_its_decoder():
    """T5: cross-attention and the encoder's blocks (under "encoder.") get the decoder's specs;
    the relative position bias tables stay whole."""
    cfg = jtlens.Config(n_layers=2, d_model=8, n_heads=4, d_head=2, d_mlp=12, n_ctx=8, d_vocab=12,
                        act_fn="relu", normalization_type="RMS", use_attn_scale=False,
                        positional_embedding_type="relative_positional_bias",
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        cross_attention=True)
    fake = type("FakeMesh", (), {"shape": {"data": 2, "model": 4}})()
    specs = sharding.param_specs(jtlens.param_shapes(cfg), fake, layer_axis="data")
    decoder, encoder = specs["blocks"], specs["encoder"]["blocks"]
    for W in ("W_Q", "W_K", "W_V", "W_O"):
        assert decoder["attn"][W] == decoder["cross_attn"][W] == encoder["attn"][W] == \
            P("data", "model", None, None), W
    assert decoder["cross_attn"]["b_Q"] == encoder["attn"]["b_K"] == P("data", "model", None)
    assert encoder["mlp"]["W_in"] == decoder["mlp"]["W_in"] == P("data", None, "model")
    assert encoder["mlp"]["W_out"] == P("data", "model", None)
    assert encoder["ln2"]["w"] == decoder["ln3"]["w"] == P("data", None)
    assert specs["encoder"]["ln_final"]["w"] == P(None)
    assert specs["rel_pos_bias"]["W_rel_pos"] == specs["encoder"]["rel_pos_bias"]["W_rel_pos"] == P(None, None)


STREAM = COMMON + """
import sys
from jtlens.loading import load
from jtlens.sharding import bytes_per_device
for folder in sys.argv[1:]:
    cfg, whole, _ = load(folder, progress=False)
    for shape in MESHES:
        mesh = make_mesh(*shape)
        scfg, streamed, _ = load(folder, mesh=mesh, progress=False)
        assert scfg == cfg, (scfg, cfg)
        assert jax.tree_util.tree_structure(streamed) == jax.tree_util.tree_structure(whole)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(streamed), jax.tree_util.tree_leaves(whole)):
            assert a.dtype == b.dtype and a.sharding.mesh.shape == mesh.shape, path
            assert rel(a, b) <= 1e-6, (folder, shape, jax.tree_util.keystr(path), rel(a, b))
        mlp = streamed["blocks"]["mlp"]
        W = mlp["experts"]["W_in"] if "experts" in mlp else mlp["W_in"]  # (a mixture: per expert)
        assert W.addressable_shards[0].data.shape[-1] == W.shape[-1] // mesh.shape["model"]
        close(jtlens.forward(streamed, clean % cfg.d_vocab, cfg), jtlens.forward(whole, clean % cfg.d_vocab, cfg), (folder, shape, "logits"))
    print(folder, "streamed ok", flush=True)
print("STREAM OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2", "olmo2", "bloom", "apertus", "gpt_oss",
                                  "qwen2_moe"])
def test_streamed_load_onto_a_mesh_equals_loading_whole(name, tmp_path):
    oracle = pytest.importorskip("tests.oracle")
    # sharded safetensors: tensors come from several files
    oracle.build_hf(name, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    out = run_on_host_devices(STREAM.replace("sys.argv[1:]", repr([str(tmp_path)])))
    assert "STREAM OK" in out, out


FAMILIES = COMMON + """
import torch
torch.set_num_threads(1)
from tests.oracle import CONFIGS, tl_model, to_jtlens
mesh = make_mesh(2, 4)
for family in sorted(CONFIGS):
    cfg, params = to_jtlens(tl_model(CONFIGS[family]))
    tokens = clean % cfg.d_vocab
    name = "blocks.1.attn.hook_z"  # (heads split over "model")
    run = jax.jit(lambda p: jtlens.forward_with_cache(p, tokens, cfg, jtlens.Hooks(capture=(name,))))
    logits, cache = run(params)
    sharded = jtlens.shard_params(params, cfg, mesh)
    slogits, scache = run(sharded)
    close(slogits, logits, (family, "logits"))
    close(scache[name], cache[name], (family, name))
    # every layer-stacked matrix is split (a knob's weights with no rule would stay whole) but
    # 2 key/value heads, which do not divide 4, the small router and the experts' output bias
    # (no "expert" axis on this mesh)
    whole = {jax.tree_util.keystr(path, simple=True, separator=".")
             for path, leaf in jax.tree_util.tree_leaves_with_path(sharded)
             if leaf.ndim >= 3 and leaf.sharding.is_fully_replicated}
    kv = {f"blocks.attn.{w}_{x}" for w in "Wb" for x in "KV"} if (cfg.n_key_value_heads or 4) % 4 else set()
    assert whole <= kv | {"blocks.mlp.W_router", "blocks.mlp.experts.b_out"}, (family, whole - kv)
    print(family, "ok", flush=True)
print("FAMILIES OK")
"""


@pytest.mark.slow
def test_every_family_on_a_2x4_mesh_gives_one_devices_numbers():
    pytest.importorskip("tests.oracle")  # (TransformerLens builds the families' weights)
    out = run_on_host_devices(FAMILIES)
    assert "FAMILIES OK" in out, out
