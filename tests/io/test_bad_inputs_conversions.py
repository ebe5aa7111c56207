"""Bad Hugging Face checkpoints through `load` and `python -m conversions`: each a one-line error
naming the file and the problem (the command: exit 1, one stderr line, no traceback), or the
correct result. Case ids start with their outcome class."""

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtlens.conversions.__main__ import main  # noqa: E402
from jtlens.loading import load  # noqa: E402

TOKENS = np.array([[1, 5, 9, 3]])


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny GPT-2 saved by transformers (model.safetensors + config.json) and its logits."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(torch.tensor(TOKENS)).logits.numpy()
    return folder, model, logits


@pytest.fixture
def copy(hf_gpt2, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(hf_gpt2[0], dst)
    return dst


def _config(**changes):
    def edit(f):
        cfg = json.loads((f / "config.json").read_text())
        cfg.update(changes)
        (f / "config.json").write_text(json.dumps(cfg))
    return edit


def _drop_key(key):
    def edit(f):
        cfg = json.loads((f / "config.json").read_text())
        del cfg[key]
        (f / "config.json").write_text(json.dumps(cfg))
    return edit


def _write(name, data):
    def edit(f):
        (f / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return edit


def _truncate(name, keep=0.5):
    def edit(f):
        data = (f / name).read_bytes()
        (f / name).write_bytes(data[: int(len(data) * keep)])
    return edit


def _state(f):
    from safetensors.numpy import load_file

    return load_file(str(f / "model.safetensors"))


def _resave(change):
    def edit(f):
        from safetensors.numpy import save_file

        tensors = _state(f)
        change(tensors)
        save_file(tensors, str(f / "model.safetensors"))
    return edit


def _to_bin(payload):
    """Replace the safetensors file by a pytorch_model.bin holding `payload` (pickled)."""
    def edit(f):
        (f / "model.safetensors").unlink()
        with open(f / "pytorch_model.bin", "wb") as fh:
            pickle.dump(payload, fh) if not callable(payload) else payload(fh)
    return edit


class _RunsCode:
    def __reduce__(self):  # what a malicious pickle does: call a function on load
        return (print, ("pickle code ran",))


def _torch_save(make):
    def edit(f):
        (f / "model.safetensors").unlink()
        torch.save(make(f), f / "pytorch_model.bin")
    return edit


def _index(weight_map, name="model.safetensors.index.json"):
    def edit(f):
        (f / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}
                                         if weight_map is not ... else {"metadata": {}}))
    return edit


def _sharded_escape(target):
    def edit(f):
        (f.parent / "elsewhere.safetensors").write_bytes((f / "model.safetensors").read_bytes())
        names = list(_state(f))
        (f / "model.safetensors").rename(f / "model-00001.safetensors")
        (f / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {n: (target if i == 0 else "model-00001.safetensors")
                            for i, n in enumerate(names)}}))
    return edit


BAD = [
    (_drop_key("n_embd"), "config.json: missing key 'n_embd', which a GPT2LMHeadModel config needs"),
    (_drop_key("vocab_size"), "config.json: missing key 'vocab_size'"),
    (_write("config.json", "[1, 2, 3]"), "config.json: expected a JSON object, found a list"),
    (_write("config.json", "{\"n_embd\": 16,"), "config.json: invalid JSON \\(Expecting"),
    (_write("config.json", "\"just a string\""), "config.json: expected a JSON object, found a str"),
    (_write("config.json", b"\xff\xfe\x00"), "config.json: not a text file"),
    (_config(architectures=["MambaForCausalLM"]), "unsupported architecture 'MambaForCausalLM'"),
    (_config(architectures=[]), "unsupported architecture None"),
    (_config(n_embd=30, n_head=4), "config.json: hidden size 30 is not divisible by 4 attention heads"),
    (_config(n_head=0), "hidden size 16 is not divisible by 0 attention heads"),
    (_config(n_layer="2"), "config.json: Config: n_layers='2' must be an integer"),
    (_config(n_layer=-1), "config.json: Config: n_layers=-1 must be >= 0"),
    (_config(activation_function="swish2"), "config.json: Config: act_fn='swish2' is not one of"),
    (_config(vocab_size=41), "param embed.W_E|tensor .* shape|converted tensor has shape"),
    (_truncate("model.safetensors"), "model.safetensors: not a readable safetensors file .*truncated"),
    (_truncate("model.safetensors", 0.001), "model.safetensors: not a readable safetensors file"),
    (_write("model.safetensors", b"\x00" * 100), "model.safetensors: not a readable safetensors file"),
    (_resave(lambda t: t.update({"transformer.wte.weight": t["transformer.wte.weight"].astype(np.int64)})),
     "tensor 'transformer.wte.weight' holds int64 values; a weight must be floating point"),
    (_resave(lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")), "missing tensor 'transformer.h.1.mlp.c_fc.bias'"),
    (_resave(lambda t: t.update({"transformer.extra.weight": np.zeros(3, np.float32)})),
     "1 tensor\\(s\\) not used by the conversion, first 'transformer.extra.weight'"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights found \\(expected model.safetensors"),
    (lambda f: (f / "config.json").unlink(), "no config.json \\(is this a Hugging Face model folder\\?\\)"),
    (_to_bin({"w": _RunsCode()}), "pytorch_model.bin: refused by torch.load\\(weights_only=True\\)"),
    (_to_bin(lambda fh: fh.write(b"not a pickle at all")), "pytorch_model.bin: refused by torch.load"),
    (_torch_save(lambda f: [torch.zeros(2)]), "pytorch_model.bin: holds a list, not a state dict"),
    (_torch_save(lambda f: {"transformer.wte.weight": 3}), "entry 'transformer.wte.weight' is a int"),
    (_index(...), "model.safetensors.index.json: no \"weight_map\" object naming the shards"),
    (_index(["model.safetensors"]), "no \"weight_map\" object"),
    (_index({}), "no \"weight_map\" object"),
    (_write("model.safetensors.index.json", "{oops"), "model.safetensors.index.json: invalid JSON"),
    (_index({"transformer.wte.weight": "model-00009.safetensors"}),
     "names shard model-00009.safetensors, which is missing"),
    (_sharded_escape("../elsewhere.safetensors"),
     "shard '../elsewhere.safetensors' is not a file in .*; refusing to read outside"),
    (_sharded_escape("sub/../../elsewhere.safetensors"), "refusing to read outside the checkpoint folder"),
    (_sharded_escape("/etc/passwd"), "shard '/etc/passwd' is not a file in"),
]


@pytest.mark.parametrize("damage, message", BAD, ids=[f"error-hf-{i}" for i in range(len(BAD))])
def test_bad_checkpoint_is_one_line_error(copy, damage, message, capfd, one_line_error):
    damage(copy)
    with pytest.raises(ValueError) as e:
        load(copy, progress=False)
    one_line_error(e, message)
    assert "pickle code ran" not in capfd.readouterr().out


def test_good_checkpoint_matches_hugging_face(hf_gpt2):  # correct
    import jax

    import jtlens

    folder, _, want = hf_gpt2
    cfg, params, _ = load(folder, progress=False)
    got = jtlens.forward(params, TOKENS, cfg)
    np.testing.assert_allclose(jax.nn.log_softmax(got), jax.nn.log_softmax(want), atol=1e-4)


def test_sharded_index_inside_the_folder_loads(copy, hf_gpt2):  # correct
    names = list(_state(copy))
    (copy / "model.safetensors").rename(copy / "model-00001-of-00001.safetensors")
    (copy / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: "./model-00001-of-00001.safetensors" for n in names}}))
    cfg, params, _ = load(copy, progress=False)
    ref_cfg, ref, _ = load(hf_gpt2[0], progress=False)
    np.testing.assert_array_equal(params["embed"]["W_E"], ref["embed"]["W_E"])


def test_bfloat16_safetensors_are_read(copy, hf_gpt2):  # correct (bf16 is floating point)
    import ml_dtypes
    from safetensors.flax import save_file

    import jax.numpy as jnp

    tensors = {k: jnp.asarray(v.astype(ml_dtypes.bfloat16)) for k, v in _state(copy).items()}
    save_file(tensors, str(copy / "model.safetensors"))
    _, params, _ = load(copy, progress=False, fold_ln=False, center_writing_weights=False,
                        center_unembed=False, fold_value_biases=False)
    want = hf_gpt2[1].transformer.wte.weight.detach().numpy().astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(params["embed"]["W_E"], want.astype(np.float32))


# ----------------------------------------------------------------------------- the command
def _progress(line: str) -> bool:
    """A blank line or a tqdm progress bar (not part of the error)."""
    return not line.strip() or "it/s]" in line or "tensor/s]" in line


def _cli(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not _progress(ln)]
    return code, lines


@pytest.mark.parametrize("setup, message", [
    (lambda out: out.write_text("x"), "error: .*out is a file; give a folder path"),
    (lambda out: (out.mkdir(), (out / "old.txt").write_text("x")),
     "error: .*out is not empty; choose a new folder or pass overwrite=True \\(--overwrite\\)"),
], ids=["error-cli-out-file", "error-cli-out-not-empty"])
def test_cli_refuses_destination(hf_gpt2, tmp_path, capsys, setup, message):
    out = tmp_path / "out"
    setup(out)
    code, lines = _cli([hf_gpt2[0], out], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert __import__("re").search(message, lines[0]), lines


def test_cli_unwritable_destination(hf_gpt2, tmp_path, capsys):  # error
    (tmp_path / "plain").write_text("x")
    code, lines = _cli([hf_gpt2[0], tmp_path / "plain" / "out"], capsys)
    assert code == 1 and len(lines) == 1 and "cannot write in" in lines[0], lines


def test_cli_overwrite_replaces(hf_gpt2, tmp_path, capsys):  # correct
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    code, _ = _cli([hf_gpt2[0], out, "--overwrite"], capsys)
    assert code == 0 and not (out / "old.txt").exists()
    assert load(out, progress=False)[0].n_layers == 2


@pytest.mark.parametrize("damage, message", [BAD[0], BAD[2], BAD[14], BAD[22], BAD[26], BAD[31]],
                         ids=["error-cli-missing-key", "error-cli-config-list", "error-cli-truncated",
                              "error-cli-pickle", "error-cli-no-weight-map", "error-cli-escape"])
def test_cli_bad_checkpoint_in_process(copy, tmp_path, capsys, damage, message):
    damage(copy)
    code, lines = _cli([copy, tmp_path / "out"], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and __import__("re").search(message, lines[0]), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", [BAD[0], BAD[14]], ids=["error-subprocess-missing-key",
                                                           "error-subprocess-truncated"])
def test_cli_subprocess_has_no_traceback(copy, tmp_path, damage):
    damage[0](copy)
    done = subprocess.run([sys.executable, "-m", "conversions", str(copy), str(tmp_path / "out")],
                          capture_output=True, text=True)
    lines = [ln for ln in done.stderr.splitlines() if not _progress(ln)]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
