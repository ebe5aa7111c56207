"""Text-free results kept on disk: the params fingerprint and `remembered`."""

import jax.numpy as jnp
import numpy as np
import pytest

from jtlens.core.remembered import params_fingerprint, remembered
from jtlens.report import analysis as report


def test_fingerprint_follows_the_contents_not_the_objects(tiny):
    cfg, params, _ = tiny
    copy = {k: {n: jnp.array(v) for n, v in p.items()} if isinstance(p, dict) else p
            for k, p in params.items() if k != "blocks"}
    copy["blocks"] = params["blocks"]
    assert params_fingerprint(copy) == params_fingerprint(params)
    w_q = np.asarray(params["blocks"]["attn"]["W_Q"])

    def with_w_q(new):
        blocks = dict(params["blocks"], attn=dict(params["blocks"]["attn"], W_Q=jnp.asarray(new)))
        return dict(params, blocks=blocks)

    zero_head = w_q.copy()
    zero_head[1, 0] = 0.0                                   # ablate one head of one layer
    one_value = w_q.copy()
    one_value[0, 1, 3, 5] += 1e-3                           # one weight nudged
    swapped = w_q.copy()
    swapped[0, 0, 0, [0, 1]] = swapped[0, 0, 0, [1, 0]]     # two weights trade places
    prints = {params_fingerprint(with_w_q(w)) for w in (w_q, zero_head, one_value, swapped)}
    assert len(prints) == 4
    assert params_fingerprint(with_w_q(w_q.astype(np.float16))) != params_fingerprint(params)


def test_remembered_computes_once_per_key(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("JTLENS_CACHE", str(tmp_path))
    cfg, params, _ = tiny
    calls = []

    def compute():
        calls.append(1)
        return dict(x=np.arange(3.0) + len(calls))

    first = remembered(("probe", 1), cfg, params, compute)
    again = remembered(("probe", 1), cfg, params, compute)
    assert len(calls) == 1 and np.array_equal(first["x"], again["x"])
    other = remembered(("probe", 2), cfg, params, compute)           # other settings
    assert len(calls) == 2 and not np.array_equal(other["x"], first["x"])
    remembered(("probe", 1), cfg.replace(n_ctx=10), params, compute)  # another Config
    doubled = dict(params, unembed={"W_U": params["unembed"]["W_U"] * 2,
                                    "b_U": params["unembed"]["b_U"]})
    remembered(("probe", 1), cfg, doubled, compute)                  # other weights
    assert len(calls) == 4
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "remembered").iterdir()) == ["probe"] * 4


def test_a_remembered_induction_probe_is_the_computed_one(shipped, tmp_path, monkeypatch):
    monkeypatch.setenv("JTLENS_CACHE", str(tmp_path))
    fresh = report.induction(shipped)
    for _ in range(2):  # written, then read back
        kept = report.induction(shipped, remember=True)
        assert kept["best"] == fresh["best"] and kept["str_tokens"] == fresh["str_tokens"]
        assert np.array_equal(kept["scores"], fresh["scores"])
        assert np.array_equal(kept["pattern"], fresh["pattern"])
    assert len(list((tmp_path / "remembered").iterdir())) == 1


def test_an_unreadable_or_unwritable_folder_costs_a_recomputation_not_the_run(tiny, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("JTLENS_CACHE", str(tmp_path))
    cfg, params, _ = tiny
    remembered(("probe",), cfg, params, lambda: dict(x=np.ones(2)))
    (path,) = (tmp_path / "remembered").iterdir()
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="cannot be read"):
        again = remembered(("probe",), cfg, params, lambda: dict(x=np.full(2, 3.0)))
    assert np.array_equal(again["x"], [3.0, 3.0])
    assert np.array_equal(remembered(("probe",), cfg, params, lambda: {})["x"], [3.0, 3.0])
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("JTLENS_CACHE", str(tmp_path / "blocked"))
    with pytest.warns(UserWarning, match="cannot keep probe"):
        assert remembered(("probe",), cfg, params, lambda: dict(x=np.zeros(1)))["x"].tolist() == [0.0]
