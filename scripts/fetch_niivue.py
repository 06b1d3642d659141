#!/usr/bin/env python3
"""Vendor NiiVue (the WebGL medical image viewer) into the package from the npm registry.

Fetches the released package tarball of @niivue/niivue at VERSION, checks it against the registry's
SHA-512 integrity, and copies its released minified UMD build (dist/niivue.umd.js) with the licence and the
version into fusion_model/report/static/niivue/. Pages then work offline and users need no build step.

    python scripts/fetch_niivue.py [VERSION]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.69.0"
PACKAGE = "@niivue/niivue"
TARGET = Path(__file__).resolve().parents[1] / "fusion_model" / "report" / "static" / "niivue"
LICENSE = """BSD 2-Clause License

Copyright (c) NiiVue contributors (https://github.com/niivue/niivue)
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def main(version: str = VERSION) -> None:
    with urllib.request.urlopen(f"https://registry.npmjs.org/{PACKAGE}/{version}", timeout=60) as response:
        meta = json.load(response)
    dist = meta["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=120) as response:
        tarball = response.read()
    algorithm, expected = dist["integrity"].split("-", 1)
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        sys.exit(f"{dist['tarball']}: integrity check failed")
    if meta.get("license") != "BSD-2-Clause":
        sys.exit(f"{PACKAGE} {version} is licensed {meta.get('license')!r}; review before vendoring")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        umd = archive.extractfile("package/dist/niivue.umd.js").read()
    TARGET.mkdir(parents=True, exist_ok=True)
    (TARGET / "niivue.umd.js").write_bytes(umd)
    (TARGET / "LICENSE").write_text(LICENSE, encoding="utf-8")
    (TARGET / "VERSION.json").write_text(json.dumps({
        "package": PACKAGE, "version": version, "file": "dist/niivue.umd.js", "license": meta["license"],
        "tarball": dist["tarball"], "integrity": dist["integrity"],
        "sha256": hashlib.sha256(umd).hexdigest()}, indent=1) + "\n", encoding="utf-8")
    print(f"{PACKAGE} {version}: {len(umd) / 1e6:.2f} MB -> {TARGET}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
