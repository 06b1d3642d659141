"""Open an HTML page in headless Chromium: which images failed to load, which errors were logged,
and a screenshot. Used by the report tests; Chromium is Debian's package (.ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("FUSION_MODEL_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "reports"
                                / "test-artifacts"))

_PROBE = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__problems.push(t.tagName ? ('failed to load ' + t.tagName + ' ' + (t.alt || String(t.src).slice(0, 80)))
                                   : ('error: ' + e.message));
}, true);
(function () { var original = console.error; console.error = function () {
  window.__problems.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var tries = 0;
  function report() {
    // interactive viewers (viewer.js) start after load: wait for each to be ready or to fail
    var viewers = Array.prototype.slice.call(document.querySelectorAll('.fm-viewer'));
    var pending = viewers.filter(function (v) { return !(v.fmState && (v.fmState.ready || v.fmState.error)); });
    if (pending.length && tries++ < 80) { setTimeout(report, 100); return; }
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                       .map(function (i) { return i.alt || String(i.src).slice(0, 80); });
    var out = document.createElement('pre'); out.id = '__probe';
    out.textContent = JSON.stringify({images: images.length, broken: broken, problems: window.__problems,
      viewers: viewers.map(function (v) { var s = v.fmState || {};
        return {ready: !!s.ready, error: s.error || null, phase: s.phase || null,
                volumes: s.volumes ? s.volumes() : []}; })});
    document.body.appendChild(out);
  }
  report();
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed; .ci/run installs Debian's chromium package")
    pytest.skip("Chromium not installed (apt-get install chromium)")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # WebGL (the pages' CT viewer) on the software rasteriser: no GPU on these machines
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--use-angle=swiftshader",
                           "--enable-unsafe-swiftshader", "--hide-scrollbars", "--disable-background-networking",
                           "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)


def check_page(page: Path, screenshot_name: str | None = None, width: int = 1200, height: int = 2400) -> dict:
    """Load ``page`` (with a probe script injected into a copy) and report images and errors."""
    page = Path(page)
    html = page.read_text(encoding="utf-8")
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(re.sub(r"<head>", "<head>" + _PROBE, html, count=1), encoding="utf-8")
    try:
        result = _run(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()])
    finally:
        probed.unlink()
    match = re.search(r'<pre id="__probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium: {result.stderr[-2000:]}"
    import html as html_lib

    report = json.loads(html_lib.unescape(match.group(1)))
    report["console"] = [line for line in result.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    if screenshot_name:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / screenshot_name
        _run([f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri()])
        report["screenshot"] = shot
    return report
