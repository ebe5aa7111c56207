"""Bad input to the `jtlens` command: each case is one line on stderr naming the problem, a
non-zero exit status, and no traceback (issue 17's CLI items)."""

import os
import shutil
import subprocess
import sys

import pytest

from jtlens import cli
from jtlens.checkpoint_io import write_manifest
from jtlens.loading import ALIASES

TEXT = "The return value is a list."
TINY = ["--model", "jtlens-tiny"]  # the fast embedded model


def _one_line(capsys, status: int, argv) -> str:
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jtlens: error: ") and "Traceback" not in captured.err
    return lines[0]


def _run(args, **kw):
    """The installed command as a user runs it, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "jtlens.cli", *args], capture_output=True,
                          timeout=300, **kw)


def _subprocess_one_line(proc, status: int) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def unwritable(tmp_path):
    """A folder the test process cannot write: mode 555, or /sys for root (who ignores modes)."""
    if os.geteuid() == 0:
        yield "/sys"
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield str(folder)
    folder.chmod(0o755)


def test_out_is_a_file(capsys, tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    err = _one_line(capsys, 2, ["run", TEXT, "--out", str(target)])
    assert f"--out {target} is a file" in err
    assert target.read_text() == "keep me"


def test_out_is_read_only(capsys, unwritable):
    err = _one_line(capsys, 2, ["run", TEXT, "--out", unwritable])
    assert f"cannot write to --out {unwritable}" in err


def test_out_under_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    err = _one_line(capsys, 2, ["run", TEXT, "--out", str(tmp_path / "f" / "sub")])
    assert "cannot write to --out" in err and "Not a directory" in err


def test_patch_out_is_a_file(capsys, tmp_path):
    target = tmp_path / "p.json"
    target.write_text("{}")
    err = _one_line(capsys, 2, ["patch", "--clean", "a b", "--corrupted", "a c", "--answer", " b",
                                "--wrong", " c", "--out", str(target)])
    assert f"--out {target} is a file" in err


def test_patch_out_is_read_only(capsys, unwritable):
    err = _one_line(capsys, 2, ["patch", "--clean", "a b", "--corrupted", "a c", "--answer", " b",
                                "--wrong", " c", "--out", unwritable])
    assert "cannot write to --out" in err


@pytest.mark.parametrize("k", ["0", "-3", "two"])
def test_top_k_below_one(capsys, k):
    err = _one_line(capsys, 2, ["run", TEXT, "--top-k", k])
    assert f"--top-k: must be a whole number of at least 1, not '{k}'" in err


def test_top_k_past_the_vocabulary(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, "--top-k", "100000", "--out", str(tmp_path), *TINY])
    assert "--top-k 100000 is more than the vocabulary (1024)" in err


def test_non_utf8_argument(capsys, tmp_path):
    # Python hands argv bytes that are not UTF-8 over as lone surrogates.
    err = _one_line(capsys, 2, ["run", "caf\udce9 au lait", "--out", str(tmp_path)])
    assert "the text is not UTF-8 (byte 0xe9 at character 3)" in err


def test_non_utf8_file(capsys, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    err = _one_line(capsys, 2, ["run", "--file", str(path), "--out", str(tmp_path / "o")])
    assert f"{path} is not UTF-8 text (byte 0xe9 at offset 3)" in err


def test_missing_file(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", "--file", str(tmp_path / "nope.txt")])
    assert f"cannot read --file {tmp_path / 'nope.txt'}: No such file or directory" in err


def test_text_and_file_together(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, "--file", str(tmp_path / "x")])
    assert "not both" in err


def test_no_text(capsys):
    assert "no text: give it as an argument" in _one_line(capsys, 2, ["run"])


def test_unknown_option_is_one_line(capsys):
    err = _one_line(capsys, 2, ["run", TEXT, "--colour", "red"])
    assert "unrecognized arguments: --colour red" in err


def test_model_without_tokenizer(capsys, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("jtlens_config.json", "params.safetensors"):
        shutil.copy(ALIASES["jtlens-tiny"] / name, folder / name)
    write_manifest(folder)  # a complete checkpoint, only without a tokenizer
    err = _one_line(capsys, 2, ["run", TEXT, "--model", str(folder), "--out", str(tmp_path / "o")])
    assert f"model {str(folder)!r} has no tokenizer" in err and "--truncate" not in err


def test_multi_token_answer_keeps_its_quotes(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, "--answer", " antidisestablishment", "--out",
                                str(tmp_path), *TINY])
    assert "--answer: ' antidisestablishment' is" in err and "tokens, not one" in err


def test_corrupted_needs_answer_and_wrong(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, "--answer", " list", "--corrupted", "The return "
                                "value is a set.", "--out", str(tmp_path), *TINY])
    assert "--corrupted needs --answer and --wrong" in err


def _bert(transformers):
    config = transformers.BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16)
    return transformers.BertForMaskedLM(config)


def _t5(transformers):
    config = transformers.T5Config(vocab_size=97, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8)
    return transformers.T5ForConditionalGeneration(config)


# The families `jtlens run` refuses (it reports a causal decoder's next token), and what the
# message names instead.
REFUSED = {"bert": (_bert, "is a bidirectional encoder (BERT-style masked LM)", "jtlens.HookedEncoder"),
           "t5": (_t5, "is an encoder-decoder (T5ForConditionalGeneration)", "jtlens.HookedEncoderDecoder")}


@pytest.fixture(scope="module", params=sorted(REFUSED))
def refused_folder(request, tmp_path_factory):
    torch = pytest.importorskip("torch")
    import transformers

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    REFUSED[request.param][0](transformers).save_pretrained(folder)
    return request.param, folder


def test_encoders_and_encoder_decoders_are_refused(capsys, refused_folder, tmp_path):
    family, folder = refused_folder
    err = _one_line(capsys, 2, ["run", TEXT, "--model", str(folder), "--out", str(tmp_path)])
    _, what, instead = REFUSED[family]
    assert what in err and f"use {instead} in Python" in err, err


@pytest.mark.slow
def test_non_utf8_bytes_in_argv_and_stdin(tmp_path):
    proc = _run([b"run", b"caf\xe9", b"--out", str(tmp_path).encode()])
    assert "the text is not UTF-8 (byte 0xe9" in _subprocess_one_line(proc, 2)
    proc = _run(["run", "-", "--out", str(tmp_path)], input=b"caf\xe9 au lait")
    assert "stdin is not UTF-8 text (byte 0xe9 at offset 3)" in _subprocess_one_line(proc, 2)
    proc = _run(["run", "-", "--out", str(tmp_path)], input=b"  \n")
    assert "the text on stdin is empty" in _subprocess_one_line(proc, 2)


@pytest.mark.slow
def test_closed_stdout(tmp_path):
    """`jtlens run ... | head -0`: the reader is gone before anything is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "jtlens.cli", "run", TEXT, "--out",
                             str(tmp_path), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("jtlens: error: the output was cut off (stdout was closed")
    assert (tmp_path / "report.html").is_file()  # the report is written before anything prints


def test_corrupted_of_another_length_fails_before_the_analysis(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, "--answer", " list", "--wrong", " set", "--corrupted",
                                "A set.", "--out", str(tmp_path), *TINY])
    assert "the clean and corrupted prompts are 8 and 4 tokens; patching needs the same length" in err
    assert not (tmp_path / "report.html").exists()
