"""Copy every measured-figure file (docs/figures/NAME.md) into the README blocks that quote it.

The README quotes a figure between ``<!-- figures/NAME.md ... -->`` and ``<!-- /figures/NAME.md -->``; the
documentation includes the same file. Edit the file, run this, and the two cannot drift (a test checks).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- (figures/[\w.-]+\.md)[^\n]*-->\n)(.*?)(<!-- /\2 -->)", re.S)


def synced(readme: str) -> str:
    """The README with every quoted block replaced by its file's current text."""
    return BLOCK.sub(lambda m: m.group(1) + (ROOT / "docs" / m.group(2)).read_text() + m.group(4), readme)


def quoted_blocks(readme: str) -> dict[str, str]:
    """Each quoted figure file and the text the README holds for it."""
    return {m.group(2): m.group(3) for m in BLOCK.finditer(readme)}


if __name__ == "__main__":
    path = ROOT / "README.md"
    text = path.read_text()
    new = synced(text)
    if new != text:
        path.write_text(new)
    print(f"{path}: {len(quoted_blocks(new))} figure block(s) in step with docs/figures/")
    sys.exit(0)
