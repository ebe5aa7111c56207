"""Hugging Face checkpoints load through jtlens.loading and match HF and TransformerLens 3.9."""

import copy
import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jtlens  # noqa: E402
from jtlens.conversions.common import ConversionError  # noqa: E402
from jtlens.loading import load  # noqa: E402
from tests.oracle import (FAMILIES, MODELS, TL_BY_HAND, TL_CAN_LOAD, assert_caches_match,  # noqa: E402
                          build_hf, max_diff, rel_diff, tl_from_folder,
                          tl_processing)

pytestmark = pytest.mark.slow  # builds and converts every Hugging Face family

SAME_AS_TL = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "act_fn", "eps",
              "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_base",
              "n_key_value_heads", "gated_mlp", "parallel_attn_mlp", "default_prepend_bos",
              "original_architecture", "use_local_attn", "window_size", "attn_types", "use_qk_norm",
              "model_name", "num_experts", "experts_per_token", "norm_topk_prob",
              "use_attention_sinks", "use_yarn_rope", "yarn_factor", "yarn_attention_factor",
              "yarn_beta_fast", "yarn_beta_slow", "yarn_original_max_position_embeddings",
              "yarn_truncate")
# TransformerLens caps these at 2048 for its n_ctx x n_ctx mask buffer (BLOOM: always 2048); jtlens
# has none and keeps the checkpoint's max_position_embeddings (BLOOM: seq_length), and n_ctx=2048
# as an option gives TL's value.
TL_CAPS_N_CTX = ("mistral", "qwen3", "bloom")


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


TOKENS = np.random.default_rng(0).integers(0, 97, (2, 10))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp("m")  # no family name in the path: TL guesses by it
            cache[name] = (folder, build_hf(name, folder))
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(FAMILIES))
def test_unprocessed_logits_match_hugging_face(built, name):
    folder, model = built(name)
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(folder, progress=False)
    assert ours.cfg.original_architecture == MODELS[name]
    assert rel_diff(ours(TOKENS), hf_logits(model, TOKENS)) <= 1e-5


@pytest.mark.parametrize("name", ["mixtral", "olmoe", "gpt_oss", "qwen2_moe"])
def test_gather_dispatch_matches_hugging_face(built, name):
    """Mixtures of experts with each expert run on its gathered tokens only (Config options)."""
    folder, model = built(name)
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(folder, progress=False,
                                                                  moe_dispatch="gather")
    assert ours.cfg.moe_dispatch == "gather"
    assert rel_diff(ours(TOKENS), hf_logits(model, TOKENS)) <= 1e-5


@pytest.mark.parametrize("name", TL_CAN_LOAD)
def test_processed_model_matches_transformer_lens_hook_by_hook(built, name):
    folder, model = built(name)
    cfg, params, _ = load(folder, progress=False)  # TransformerLens's from_pretrained defaults
    tl = tl_from_folder(folder)
    for field in SAME_AS_TL + (() if name in TL_CAPS_N_CTX else ("n_ctx",)):
        theirs = getattr(tl.cfg, field)
        if field == "attn_types" and not tl.cfg.use_local_attn:
            theirs = None  # (Mixtral: TransformerLens lists its layers as all "global")
        assert getattr(cfg, field) == (tuple(theirs) if isinstance(theirs, list) else theirs), field
    with torch.no_grad():
        ref_logits, ref = tl.run_with_cache(torch.tensor(TOKENS))
    logits, cache = jtlens.forward_with_cache(params, TOKENS, cfg, hooks=jtlens.Hooks(capture=True))
    assert max_diff(logits, ref_logits.numpy()) <= 1e-4
    assert_caches_match(cache, {k: v.numpy() for k, v in ref.items()})
    # Processing keeps the model's predictions: log-probs equal Hugging Face's.
    hf = jax.nn.log_softmax(hf_logits(model, TOKENS))
    assert max_diff(jax.nn.log_softmax(logits), hf) <= 1e-4


def test_sharded_safetensors_and_torch_bin(built, tmp_path):
    _, model = built("llama")
    expect = hf_logits(model, TOKENS)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(tmp_path / "sharded" / "config.json", binary)
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    binary_shards = tmp_path / "bin_sharded"  # pytorch_model.bin.index.json + two pickles
    binary_shards.mkdir()
    shutil.copy(binary / "config.json", binary_shards)
    state = model.state_dict()
    names = {k: f"pytorch_model-0000{1 + i % 2}-of-00002.bin" for i, k in enumerate(state)}
    for shard in set(names.values()):
        torch.save({k: v for k, v in state.items() if names[k] == shard}, binary_shards / shard)
    (binary_shards / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": names}))
    for folder in (tmp_path / "sharded", binary, binary_shards):
        cfg, params, _ = jtlens.loading.load_no_processing(folder, progress=False)
        assert max_diff(jtlens.forward(params, TOKENS, cfg), expect) <= 1e-4, folder.name
    # bfloat16 safetensors (numpy has no bfloat16) read exactly, widened to float32.
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    cfg, params, _ = jtlens.loading.load_no_processing(tmp_path / "bf16", progress=False)
    assert max_diff(jtlens.forward(params, TOKENS, cfg), hf_logits(half.float(), TOKENS)) <= 1e-4


def _broken(built, tmp_path, edit, name="gpt2"):
    from safetensors.numpy import load_file, save_file

    folder, _ = built(name)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = load_file(bad / "model.safetensors")
    edit(tensors)
    save_file(tensors, bad / "model.safetensors")
    return bad


def test_bad_checkpoints_are_clear_errors(built, tmp_path):
    def drop(t):
        del t["transformer.h.1.mlp.c_fc.bias"]

    def extra(t):
        t["transformer.h.0.attn.surprise"] = np.zeros(3, np.float32)

    def reshape(t):
        t["transformer.h.0.mlp.c_proj.bias"] = np.zeros(7, np.float32)

    with pytest.raises(ConversionError, match="missing tensor 'transformer.h.1.mlp.c_fc.bias'"):
        load(_broken(built, tmp_path / "a", drop), progress=False)
    with pytest.raises(ConversionError, match="not used by the conversion.*surprise"):
        load(_broken(built, tmp_path / "b", extra), progress=False)
    with pytest.raises(ConversionError, match=r"blocks.mlp.b_out: layer 1 has shape \(32,\), layer 0 has \(7,\)"):
        load(_broken(built, tmp_path / "c", reshape), progress=False)
    untied = _broken(built, tmp_path / "e", lambda t: t.pop("lm_head.weight"), name="llama")
    with pytest.raises(ConversionError, match="missing tensor 'lm_head.weight'"):
        load(untied, progress=False)  # its config does not tie the unembedding to the embedding
    folder = _broken(built, tmp_path / "d", lambda t: None)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, architectures=["MambaForCausalLM"])))
    with pytest.raises(ConversionError, match="unsupported architecture 'MambaForCausalLM'.*GPT2LMHeadModel"):
        load(folder, progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load(tmp_path / "nowhere")


def test_native_round_trip_keeps_processing_state(built, tmp_path):
    folder, model = built("gpt2")
    cfg, params, _ = load(folder, progress=False)
    jtlens.loading.save_converted(tmp_path / "native", cfg, params,
                                  processing=jtlens.loading.default_processing())
    cfg2, params2, _ = load(tmp_path / "native", progress=False)
    assert cfg2 == cfg
    assert max_diff(jtlens.forward(params2, TOKENS, cfg2), jtlens.forward(params, TOKENS, cfg)) == 0


def _tl_by_hand(model, name):
    """TransformerLens 3.9 cannot resolve Gemma, OLMo 1/2 or Phi from a folder (presets picked by
    hub name; Phi's partial_rotary_factor moved in transformers 5): build its config by hand from the HF config (as TransformerLens's own
    presets spell it) and use its weight conversion."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import (convert_gemma_weights,
                                                                convert_olmo2_weights,
                                                                convert_olmo_weights,
                                                                convert_phi_weights)

    c = model.config.get_text_config()
    cfg = dict(d_model=c.hidden_size, d_head=getattr(c, "head_dim", None) or c.hidden_size //
               c.num_attention_heads, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
               n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, d_vocab=c.vocab_size,
               positional_embedding_type="rotary", gated_mlp=True, device="cpu",
               original_architecture=MODELS[name])
    if name == "phi":  # (its folder config fails: transformers 5 moved partial_rotary_factor)
        cfg.update(act_fn=c.hidden_act, eps=c.layer_norm_eps, normalization_type="LN",
                   rotary_base=c.rope_parameters["rope_theta"], parallel_attn_mlp=True,
                   gated_mlp=False, default_prepend_bos=False, rotary_dim=round(
                       c.rope_parameters["partial_rotary_factor"] * cfg["d_head"]))
        convert = convert_phi_weights
    elif name.startswith("olmo"):
        cfg.update(act_fn="silu", rotary_base=c.rope_parameters["rope_theta"])
        cfg.update(dict(normalization_type="LN", eps=1e-5, clip_qkv=c.clip_qkv) if name == "olmo"
                   else dict(normalization_type="RMS", eps=c.rms_norm_eps))
        convert = convert_olmo_weights if name == "olmo" else convert_olmo2_weights
    else:
        cfg.update(eps=c.rms_norm_eps, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                   rotary_base=10000.0, rotary_dim=c.head_dim, use_attn_scale=True, final_rms=True,
                   n_key_value_heads=c.num_key_value_heads)
        convert = convert_gemma_weights
    if name in ("gemma2", "gemma3", "gemma3_multimodal"):
        cfg.update(window_size=c.sliding_window, use_local_attn=True,
                   attn_types=["local", "global"], use_normalization_before_and_after=True,
                   attn_scale=c.query_pre_attn_scalar ** 0.5)
    if name == "gemma2":
        cfg.update(attn_scores_soft_cap=c.attn_logit_softcapping,
                   output_logits_soft_cap=c.final_logit_softcapping)
    if name.startswith("gemma3"):  # as TransformerLens's Gemma 3 presets spell it
        rope = c.rope_parameters
        cfg.update(use_qk_norm=True, rotary_base=rope["full_attention"]["rope_theta"],
                   rotary_base_local=rope["sliding_attention"]["rope_theta"],
                   rotary_scaling_factor=rope["full_attention"]["factor"])
    cfg = HookedTransformerConfig(**cfg)
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(convert(model, cfg),
                                   **tl_processing(cfg, center_unembed=name != "gemma2"))
    return tl.eval()


def _tl_qwen1(folder):
    """TransformerLens 3.9's own Qwen 1 config and weight conversion, without the remote code
    they need: config.json read as a plain PretrainedConfig, and the checkpoint's tensors as the
    module tree (transformer.h[l].attn.c_attn.weight, ...) that convert_qwen_weights walks."""
    from types import SimpleNamespace

    import transformer_lens.loading_from_pretrained as lp
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_qwen_weights

    class StubAutoConfig:
        @staticmethod
        def from_pretrained(path, **kwargs):
            return transformers.PretrainedConfig(**json.loads((folder / "config.json").read_text()))

    def tree(flat):  # {"a.0.b": t} -> a[0].b = t (numbered children as lists)
        heads = {}
        for key, value in flat.items():
            head, _, rest = key.partition(".")
            heads.setdefault(head, {})[rest] = value
        if all(rest == "" for sub in heads.values() for rest in sub):
            return SimpleNamespace(**{h: sub[""] for h, sub in heads.items()})
        if all(h.isdigit() for h in heads):
            return [tree(heads[str(i)]) for i in range(len(heads))]
        return SimpleNamespace(**{h: tree(sub) for h, sub in heads.items()})

    original = lp.AutoConfig
    lp.AutoConfig = StubAutoConfig
    try:
        cfg = lp.get_pretrained_model_config(str(folder), fold_ln=True, device="cpu",
                                             dtype=torch.float32, trust_remote_code=True)
    finally:
        lp.AutoConfig = original
    assert cfg.original_architecture == "QWenLMHeadModel"
    cfg.tokenizer_name = None  # (a random checkpoint has none)
    tl = HookedTransformer(cfg, move_to_device=False)
    state = convert_qwen_weights(tree(load_file(str(folder / "model.safetensors"))), cfg)
    tl.load_and_process_state_dict(state, **tl_processing(cfg))
    return tl.eval()


@pytest.mark.parametrize("name", TL_BY_HAND)
def test_processed_model_matches_hand_built_transformer_lens_hook_by_hook(built, name):
    folder, model = built(name)
    cfg, params, _ = load(folder, progress=False)
    tl = _tl_qwen1(folder) if name == "qwen" else _tl_by_hand(model, name)
    with torch.no_grad():
        ref_logits, ref = tl.run_with_cache(torch.tensor(TOKENS))
    logits, cache = jtlens.forward_with_cache(params, TOKENS, cfg, hooks=jtlens.Hooks(capture=True))
    assert max_diff(logits, ref_logits.numpy()) <= 1e-4
    assert_caches_match(cache, {k: v.numpy() for k, v in ref.items()})
    assert max_diff(jax.nn.log_softmax(logits), jax.nn.log_softmax(hf_logits(model, TOKENS))) <= 1e-4


def test_command_line_conversion(built, tmp_path):
    import subprocess
    import sys

    folder, model = built("qwen2")
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, "-m", "conversions", str(folder), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Qwen2ForCausalLM" in done.stdout
    cfg, params, _ = load(out, progress=False)
    assert cfg.normalization_type == "RMSPre"  # processed once, not again on load
    assert max_diff(jax.nn.log_softmax(jtlens.forward(params, TOKENS, cfg)),
                    jax.nn.log_softmax(hf_logits(model, TOKENS))) <= 1e-4
    from jtlens.conversions.__main__ import main

    assert main([str(folder), str(tmp_path / "half"), "--dtype", "bfloat16", "--no-processing"]) == 0
    half, params16, _ = load(tmp_path / "half", fold_ln=False, progress=False)
    assert (half.dtype, half.normalization_type) == ("bfloat16", "RMS")
    assert params16["embed"]["W_E"].dtype == jax.numpy.bfloat16
    bad = subprocess.run([sys.executable, "-m", "conversions", str(tmp_path / "nope"),
                          str(tmp_path / "unused")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "no such folder" in bad.stderr
    # The installed name runs the same command (it lives above loading, with the CLI).
    usage = subprocess.run([sys.executable, "-m", "jtlens.conversions", "--help"],
                           capture_output=True, text=True)
    assert usage.returncode == 0 and "python -m jtlens.conversions" in usage.stdout, usage.stderr


def test_hub_names_resolve_through_aliases(monkeypatch):
    asked = []
    monkeypatch.setattr(jtlens.loading, "_download", lambda repo: asked.append(repo) or repo)
    jtlens.loading.resolve("pythia-70m")
    jtlens.loading.resolve("Qwen/Qwen2-0.5B")
    assert asked == ["EleutherAI/pythia-70m", "Qwen/Qwen2-0.5B"]


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="could not fetch 'EleutherAI/pythia-70m'.*local folder"):
        load("pythia-70m")


def test_options_as_in_transformer_lens(built, tmp_path):
    folder, _ = built("gpt2")
    # A key that is not a Config field overrides config.json, as TransformerLens passes it on.
    cfg, params, _ = load(folder, activation_function="relu", n_ctx=16, progress=False)
    assert (cfg.act_fn, cfg.n_ctx, cfg.model_name) == ("relu", 16, folder.name)
    relu = transformers.GPT2LMHeadModel.from_pretrained(folder, activation_function="relu").eval()
    assert max_diff(jax.nn.log_softmax(jtlens.forward(params, TOKENS, cfg)),
                    jax.nn.log_softmax(hf_logits(relu, TOKENS))) <= 1e-4
    half, params16, _ = load(folder, dtype="bfloat16", progress=False)
    assert half.dtype == "bfloat16" and params16["blocks"]["attn"]["W_Q"].dtype == jax.numpy.bfloat16
    assert jtlens.loading.model_name_for("pythia-70m") == "pythia-70m"
    with pytest.raises(TypeError, match="unknown option 'activaton_function'"):
        load(folder, activaton_function="relu", progress=False)
    jtlens.loading.save_converted(tmp_path / "native", cfg, params)
    with pytest.raises(TypeError, match="overrides must be jtlens.Config fields"):
        load(tmp_path / "native", activation_function="relu", progress=False)


def test_hub_download_prefers_safetensors(monkeypatch, tmp_path):
    import huggingface_hub

    asked = []

    def fake(repo, allow_patterns):  # a repository that has only a .bin checkpoint
        asked.append([p for p in allow_patterns if p in ("*.safetensors", "*.bin")])
        return str(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert jtlens.loading._download("facebook/opt-125m") == tmp_path
    assert asked == [["*.safetensors"], ["*.bin"]]


def test_tokenizer_travels_with_the_model(built, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder, _ = built("gpt2")
    hf_dir = tmp_path / "with_tokenizer"
    shutil.copytree(folder, hf_dir)
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "the", "cat", "sat"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                                         eos_token="<|endoftext|>").save_pretrained(hf_dir)
    model = jtlens.HookedTransformer.from_pretrained(hf_dir, progress=False)
    assert model.to_str_tokens("the cat sat") == ["<|endoftext|>", "the", "cat", "sat"]
    jtlens.loading.save_converted(tmp_path / "native", model.cfg, model.params, model.tokenizer)
    again = jtlens.HookedTransformer.from_pretrained(tmp_path / "native", progress=False)
    assert again.to_tokens("the cat sat").tolist() == [[0, 1, 2, 3]]


def test_safetensors_load_without_torch(built):
    import subprocess
    import sys

    folder, _ = built("llama")
    script = ("import sys; sys.modules['torch'] = None  # any torch import now fails\n"
              "import jtlens, numpy as np\n"
              f"m = jtlens.HookedTransformer.from_pretrained({str(folder)!r}, progress=False)\n"
              "print(m(np.arange(5)).shape)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "(1, 5, 97)" in done.stdout, done.stderr


def test_native_folder_applies_only_the_processing_still_missing(built, tmp_path):
    folder, _ = built("gpt2")
    partial = dict(jtlens.loading.default_processing(), center_unembed=False, fold_value_biases=False)
    cfg, params, _ = load(folder, progress=False, **partial)
    jtlens.loading.save_converted(tmp_path / "native", cfg, params, processing=partial)
    cfg2, params2, _ = load(tmp_path / "native", progress=False)  # default flags: the rest is done now
    cfg_full, params_full, _ = load(folder, progress=False)
    assert cfg2 == cfg_full
    assert max_diff(jtlens.forward(params2, TOKENS, cfg2), jtlens.forward(params_full, TOKENS, cfg_full)) <= 1e-5
    with pytest.warns(UserWarning, match="cannot be undone"):
        load(tmp_path / "native", progress=False, fold_ln=False)


def test_qwen1_refuses_what_it_does_not_compute(built, tmp_path):
    """Past its training length Qwen 1 changes its attention (log-n scaling, dynamic NTK
    rotary), which jtlens does not compute: longer inputs are refused, also when n_ctx is raised."""
    folder, _ = built("qwen")
    model = jtlens.HookedTransformer.from_pretrained_no_processing(folder, progress=False,
                                                                   n_ctx=128)
    assert (model.cfg.use_logn_attn, model.cfg.use_dynamic_ntk_rope, model.cfg.train_seq_length) == (
        True, True, 64)
    with pytest.raises(ValueError, match="65 tokens.*train_seq_length.*=64"):
        model(np.zeros((1, 65), np.int64))
    with pytest.raises(ValueError, match="66 tokens.*train_seq_length.*=64"):
        model.generate(np.zeros((1, 60), np.int64), max_new_tokens=6, stop_at_eos=False,
                       verbose=False)
    cfg = json.loads((folder / "config.json").read_text())
    bad = tmp_path / "biased"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text(json.dumps(dict(cfg, no_bias=False)))
    with pytest.raises(ConversionError, match="no_bias=false.*gate"):
        load(bad, progress=False)


def test_qwen2_moe_shared_expert_hooks_match_hugging_face_modules(built, tmp_path):
    """TransformerLens 3.9 cannot load Qwen2-MoE or Qwen3-MoE (NotImplementedError), so the
    shared expert's hooks are checked against Hugging Face's own modules, and the processed
    model's log-probs against Hugging Face's."""
    folder, model = built("qwen2_moe")
    seen = {}
    for l, layer in enumerate(model.model.layers):
        moe = layer.mlp
        moe.shared_expert.down_proj.register_forward_pre_hook(
            lambda m, args, l=l: seen.__setitem__(("post", l), args[0].numpy()))
        moe.shared_expert_gate.register_forward_hook(
            lambda m, args, out, l=l: seen.__setitem__(("weight", l), torch.sigmoid(out).numpy()))
    logits = hf_logits(model, TOKENS)
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(folder, progress=False)
    _, cache = ours.run_with_cache(TOKENS)
    for l in range(2):
        assert max_diff(cache[f"blocks.{l}.mlp.shared_expert.hook_post"], seen["post", l]) <= 1e-5
        assert max_diff(cache[f"blocks.{l}.mlp.hook_shared_expert_weight"], seen["weight", l]) <= 1e-5
    for name in ("qwen2_moe", "qwen3_moe"):
        folder, model = built(name)
        cfg, params, _ = load(folder, progress=False)
        assert cfg.normalization_type == "RMSPre"  # ln2 folded into the experts and their gates
        assert max_diff(jax.nn.log_softmax(jtlens.forward(params, TOKENS, cfg)),
                        jax.nn.log_softmax(hf_logits(model, TOKENS))) <= 1e-4
    cfg = json.loads((folder / "config.json").read_text())
    dense = tmp_path / "dense"
    shutil.copytree(folder, dense)
    (dense / "config.json").write_text(json.dumps(dict(cfg, mlp_only_layers=[1])))
    with pytest.raises(ConversionError, match=r"layers \[1\] have a dense MLP"):
        load(dense, progress=False)


def test_bloom_with_heads_not_a_power_of_two_matches_hugging_face(tmp_path):
    """BLOOM's ALiBi slopes for 6 heads (as for bloom-176b's 112) interleave a second series;
    TransformerLens 3.9's single geometric series would move these logits."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from jtlens.core.components import alibi_slopes

    for n in (1, 3, 6, 12, 16, 112):
        hf = build_alibi_tensor(torch.ones(1, 2), n, torch.float32).reshape(n, 2)[:, 1].numpy()
        np.testing.assert_allclose(alibi_slopes(n), hf, rtol=1e-6)
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=97, hidden_size=48, n_layer=2, n_head=6, seq_length=64)).eval()
    model.save_pretrained(tmp_path)
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(tmp_path, progress=False)
    assert rel_diff(ours(TOKENS), hf_logits(model, TOKENS)) <= 1e-5
