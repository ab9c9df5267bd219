"""Layer 7, report: the paper's tables and figures rebuilt from a run store, with the paper's numbers
beside ours. Reads through tracking.runstore; imports deploy for the Pareto plot; never Ray.
"""
from .build import DEFAULT_UI, Report, build_report, render_html, render_markdown, report_json, write_report  # noqa: F401
