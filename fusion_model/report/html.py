"""Rendering of the HTML reports and atomic writing of a report folder."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import jinja2

from fusion_model.fileio import atomic_directory

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("fusion_model.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI to embed in a page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _ci(pair, digits: int = 3, percent: bool = False) -> str:
    if not pair or any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in pair):
        return "–"
    if percent:
        return f"{100 * pair[0]:.{digits - 2}f}–{100 * pair[1]:.{digits - 2}f}%"
    return f"{pair[0]:.{digits}f}–{pair[1]:.{digits}f}"


def _pvalue(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


_ENV.filters.update(num=_num, pct=_pct, ci=_ci, pvalue=_pvalue,
                    tojson_pretty=lambda obj: json.dumps(obj, indent=2, default=str))


def render(template: str, **context) -> str:
    """Render a packaged Jinja2 template (autoescaped)."""
    return _ENV.get_template(template).render(**context)


def write_report_dir(out: Path, files: dict[str, bytes | str], overwrite: bool = False) -> Path:
    """Write every file of a report into ``out`` at once: a failure leaves ``out`` as it was."""
    with atomic_directory(Path(out), overwrite=overwrite) as staging:
        for rel, content in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
    return Path(out)
