"""Layer 7, report: the paper's tables and figures rebuilt from a run store, with the paper's numbers
beside ours. Reads through tracking.runstore; imports deploy for the Pareto plot; never Ray.
"""
from .build import build_report, write_report  # noqa: F401
from .cells import DEFAULT_UI, Report  # noqa: F401
from .render import render_html, render_markdown, report_json  # noqa: F401
