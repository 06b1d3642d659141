"""Self-contained HTML reports (jinja2 templates, PNGs embedded as data URIs), shared by
evaluate, explain and tune."""

from fusion_model.report.html import data_uri, render, write_report_dir

__all__ = ["data_uri", "render", "write_report_dir"]
