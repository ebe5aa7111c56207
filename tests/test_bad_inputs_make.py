"""`make run TEXT='...'` hands the text to jtlens verbatim: neither make nor the shell evaluates
it. A stand-in `jtlens` in a fake venv prints the arguments it received. Outcome: correct."""

import json
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXTS = ['He said "hi" twice', "costs $5 and $$6", "`touch pwned` and $(touch pwned2)",
         "$(HOME) ${HOME} $HOME", "it's a 'quote'", "-h looks like an option", "a; rm -rf x && b | c",
         "back\\slash \\n", "tab\tsep", "ünïcödé ✓"]


@pytest.fixture(scope="module")
def fake_venv(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path_factory.mktemp("venv")
    (venv / "bin").mkdir()
    script = venv / "bin" / "jtlens"
    script.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    (venv / ".core").touch()  # newer than pyproject.toml: make installs nothing
    return venv


@pytest.mark.parametrize("text", TEXTS, ids=[f"correct-make-{i}" for i in range(len(TEXTS))])
def test_make_run_passes_text_verbatim(fake_venv, tmp_path, text):
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "run", f"VENV={fake_venv}", f"TEXT={text}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["run", "--", text]
    assert not list(tmp_path.iterdir()) and not (ROOT / "pwned").exists()
