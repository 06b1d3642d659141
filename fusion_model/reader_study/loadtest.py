"""A load test of the reading application: the server started as the CLI starts it (a real process on
localhost), and readers whose HTTP clients do what a browser does (sign in, load each case page with every image
it shows, answer), many at once. Used by the browser tests and ``benchmarks/reader_study.py``; also a way to
check a deployment before a study."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ReadingServer:
    """``fusion-model reader-study serve STUDY --port P`` in a subprocess (killed on exit)."""

    def __init__(self, study: Path, port: int | None = None):
        self.study = Path(study)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ReadingServer:
        """Start the server and wait until it answers (or fail with what it printed)."""
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen([sys.executable, "-m", "fusion_model.cli", "reader-study", "serve",
                                         str(self.study), "--port", str(self.port)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start in time")

    def kill(self) -> None:
        """SIGKILL: the server dies without any chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> ReadingServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class HttpReader:
    """A reader's browser over plain HTTP: signs in, loads each case page with every image it shows, answers."""

    def __init__(self, url: str, code: str, token: str):
        self.client = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
        self.code = code
        response = self.client.post("/login", data={"code": code, "token": token})
        response.raise_for_status()
        for script in ("niivue.umd.js", "viewer.js"):  # fetched once; a browser caches them (max-age)
            self.client.get(f"/static/{script}").raise_for_status()

    def read_next(self, rng) -> tuple[str, float] | None:
        """Load the next case (page + all its volumes); return (session.position, seconds) or None when done."""
        start = time.perf_counter()
        page = self.client.get("/read")
        page.raise_for_status()
        found = re.search(r'name="session" value="(\d+)".*?name="position" value="(\d+)"', page.text, re.S)
        if not found:
            return None
        for url in re.findall(r'"url": "(/volume/[^"]+)"', page.text):
            self.client.get(url).raise_for_status()
        seconds = time.perf_counter() - start
        session, position = found.groups()
        answer = self.client.post("/answer", data={
            "session": session, "position": position, "likelihood": int(rng.integers(0, 101)),
            "scale5": int(rng.integers(1, 6)), "lesion_type": "adenoma", "confidence": int(rng.integers(1, 6))})
        answer.raise_for_status()
        return f"{session}.{position}", seconds


def run_readers(url: str, tokens: dict[str, str], seed: int = 0) -> dict:
    """Every reader of ``tokens`` reads all their cases at once (one thread each); returns per-reading seconds
    (page + images) and the readings each reader answered."""
    from concurrent.futures import ThreadPoolExecutor

    def one(code: str) -> tuple[str, list]:
        rng = np.random.default_rng([seed, sum(map(ord, code))])
        reader = HttpReader(url, code, tokens[code])
        done = []
        while (result := reader.read_next(rng)) is not None:
            done.append(result)
        return code, done

    start = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as pool:
        results = dict(pool.map(one, tokens))
    seconds = [s for done in results.values() for _, s in done]
    return {"wall_seconds": time.perf_counter() - start, "case_seconds": seconds,
            "readings": {code: [k for k, _ in done] for code, done in results.items()}}
