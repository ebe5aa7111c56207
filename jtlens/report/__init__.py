"""Layer 5, report: pictures and pages on top of everything, and the `jtlens` command.

analysis (`analyze` / `summary` / `write_report`: what a model does with one text), figures
(its SVGs and HTML helpers), patching_section (`jtlens patch`), patching_plots (sweep
heatmaps, `jtlens.patching.plots`), heatmap (the one plotting convention, PNG), svg (the report's pictures), attention_view
(the interactive attention viewer), graph_view (attribution graphs as a page),
feature_dashboard (SAE feature dashboards), sae_section (`jtlens run --sae`), cli (`jtlens run`, `jtlens patch`), convert_command (`python -m jtlens.conversions`).

May import: every layer below. Entry points: `analyze`, `write_report`, `cli.main`.
`jtlens.report.<name>` for analysis's names is kept from when the report was one module.
"""

from jtlens.report.analysis import (  # noqa: F401
    INDUCTION_THRESHOLD, WINDOW, Analysis, analyze, direct_logit_attribution, dla_by_position,
    induction, induction_text, logit_direction, logit_lens, summary, write_report)
