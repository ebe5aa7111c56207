"""`analyze` + `write_report` (what `jtlens run` does) on every TransformerLens-config family
(tests/oracle.py CONFIGS) with a tiny BPE tokenizer: the logit lens's last row is the model's own
prediction and the attributions add up to the logits they explain."""

import numpy as np
import pytest

import jtlens
from jtlens.report import analyze, write_report
from tests.oracle import CONFIGS, tl_model, to_jtlens, tokenizer, torch

TEXT = "The cat sat on the mat. The cat sat"


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_report_on_every_family(family, tmp_path):
    torch.set_num_threads(1)
    tok = tokenizer()
    cfg, params = to_jtlens(tl_model(dict(CONFIGS[family], d_vocab=len(tok))))
    model = jtlens.HookedTransformer(cfg, params, tok)
    logits = np.asarray(model(TEXT), np.float64)[0]                       # [pos, d_vocab]
    cap = cfg.output_logits_soft_cap
    raw = cap * np.arctanh(logits / cap) if cap > 0 else logits  # the attributions precede the cap
    answer, wrong = (int(i) for i in np.argsort(-logits[-1])[:2])
    a = analyze(model, TEXT, answer=answer, wrong=wrong)
    pos = len(a["tokens"])
    assert pos == logits.shape[0] and a["lens_ids"].shape == (cfg.n_layers + 1, pos - a["lens_from"])
    # the lens's last row reads the final residual: the model's own top prediction and probability
    top = logits.argmax(-1)[a["lens_from"]:]
    assert (a["lens_ids"][-1] == top).all() and (a["top_ids"][:, 0] == logits.argmax(-1)).all()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert np.abs(a["lens_probs"][-1] - probs.max(-1)[a["lens_from"]:]).max() <= 1e-4
    view = a["answer_view"]
    assert view["lens_rank"][-1, -1] == 0  # the answer is the model's top token at the end
    # direct logit attribution: the parts add up to the logit (difference) at every position
    for parts, want in ((view["dla"], raw[:, answer]), (view["dla_diff"], raw[:, answer] - raw[:, wrong])):
        total = sum(np.asarray(v, np.float64).reshape(pos, -1).sum(-1) for v in parts.values())
        assert np.abs(total - want).max() <= 1e-4, (family, np.abs(total - want).max())
    assert abs(sum(float(np.sum(v)) for v in a["dla"].values()) - raw[-1, a["target"]]) <= 1e-4
    page = write_report(a, tmp_path).read_text(encoding="utf-8")
    assert "cat" in page and "<h2>Most active MLP neurons</h2>" in page or not a["neurons"]
    assert '"layers": [' + ", ".join(f'"L{i}"' for i in range(cfg.n_layers)) + "]" in page
