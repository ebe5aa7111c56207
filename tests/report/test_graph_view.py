"""The attribution-graph page: one self-contained file holding the graph JSON intact (a token
such as "</script>" cannot end the script early), with the prompt escaped."""

from __future__ import annotations

import json
import re

import pytest

from jtlens.report.graph_view import graph_html, write_graph_html

DATA = {"metadata": {"slug": "demo", "scan": "s", "transcoder_list": [],
                     "prompt_tokens": ["<b>", "</script>"], "prompt": "<b></script>",
                     "node_threshold": 0.8, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": [{"node_id": "E_5_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
                   "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                   "jsNodeId": "E_5-0", "clerp": "", "influence": 0.5, "activation": None},
                  {"node_id": "0_7_1", "feature": 35, "layer": "0", "ctx_idx": 1,
                   "feature_type": "cross layer transcoder", "token_prob": 0.0, "is_target_logit": False,
                   "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "0_7-0", "clerp": "", "influence": 0.2,
                   "activation": 1.5},
                  {"node_id": "3_9_1", "feature": 9, "layer": "3", "ctx_idx": 1, "feature_type": "logit",
                   "token_prob": 0.9, "is_target_logit": True, "run_idx": 0, "reverse_ctx_idx": 0,
                   "jsNodeId": "L_9-1", "clerp": 'Output "x" (p=0.900)', "influence": None,
                   "activation": None}],
        "links": [{"source": "E_5_0", "target": "0_7_1", "weight": 0.25},
                  {"source": "0_7_1", "target": "3_9_1", "weight": -1.0}]}


def test_page_embeds_the_graph(tmp_path):
    page = graph_html(DATA)
    assert page.count("</script>") == 1 and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    embedded = re.search(r"const data = (.*?);\n", page).group(1)
    assert json.loads(embedded) == DATA
    assert "<code>&lt;b&gt;&lt;/script&gt;</code>" in page
    assert "3 nodes, 2 edges" in page
    path = write_graph_html(DATA, tmp_path / "g.html")
    assert path.read_text(encoding="utf-8") == page


@pytest.mark.slow
def test_clicking_a_node_keeps_its_paths_in_chromium(tmp_path):
    """A feature off the clicked token's paths (and its edge) dims; a second click restores."""
    from tests.report.test_attention_view import _chromium, _dom

    cmd = _chromium()
    side = {"node_id": "0_8_0", "feature": 44, "layer": "0", "ctx_idx": 0,
            "feature_type": "cross layer transcoder", "token_prob": 0.0, "is_target_logit": False,
            "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "0_8-0", "clerp": "", "influence": 0.1,
            "activation": 0.7}
    data = dict(DATA, nodes=DATA["nodes"] + [side],
                links=DATA["links"] + [{"source": "0_8_0", "target": "3_9_1", "weight": 0.5}])
    click = 'document.querySelector(\'[data-id="{}"]\').dispatchEvent(new MouseEvent("click"));'
    dom = _dom(cmd, graph_html(data), tmp_path, click.format("E_5_0"))
    assert 'data-picked="E_5_0"' in dom
    for node, lit in (("E_5_0", True), ("0_7_1", True), ("3_9_1", True), ("0_8_0", False)):
        tag = re.search(rf'<(?:circle|rect)[^>]*data-id="{node}"[^>]*>', dom).group(0)
        assert ('opacity="1"' in tag) == lit, (node, tag)
    assert dom.count('data-lit="1"') == 2 and dom.count('data-lit="0"') == 1
    dom = _dom(cmd, graph_html(data), tmp_path, click.format("E_5_0") * 2)
    assert 'data-picked=""' in dom and dom.count('data-lit="1"') == 3
