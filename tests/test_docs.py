"""The documentation: the site builds with --strict (links, snippets, every public docstring), each command's
page carries its options from the CLI itself, and the README quotes the measured figures verbatim from the
files the site includes."""

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_quotes_the_figure_files_verbatim():
    sync = _load(ROOT / "scripts" / "sync_figures.py", "sync_figures")
    readme = (ROOT / "README.md").read_text()
    blocks = sync.quoted_blocks(readme)
    assert "figures/demo.md" in blocks
    for name, text in blocks.items():
        assert text == (ROOT / "docs" / name).read_text(), f"README's copy of docs/{name} drifted: edit the " \
                                                         "file and run python scripts/sync_figures.py"
    assert sync.synced(readme) == readme


def test_the_docstring_check_names_what_lacks_one_and_follows_inheritance():
    hooks = _load(ROOT / "docs" / "hooks.py", "docs_hooks")
    module = types.ModuleType("toy_module")

    class Base:
        def margin(self):
            """The margin."""

    class Child(Base):
        """A documented class."""

        def margin(self):  # inherits the base's docstring
            return 1

        def bare(self):
            return 2

    def undocumented():
        return 3

    for obj in (Base, Child, undocumented):
        obj.__module__ = "toy_module"
        setattr(module, obj.__name__, obj)
    lacking = [where for where, doc in hooks._public_members(module) if not doc]
    assert sorted(lacking) == ["toy_module.Base", "toy_module.Child.bare", "toy_module.undocumented"]


def test_the_documentation_site_builds_strict_with_every_command_and_the_api(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train = (tmp_path / "commands" / "train" / "index.html").read_text()
    assert "--test-centre" in train and "hold this centre out" in train  # the options come from the CLI
    assert "--model" in (tmp_path / "commands" / "segment" / "index.html").read_text()
    heads = (tmp_path / "api" / "heads" / "index.html").read_text()
    assert "FusionMethod" in heads and "decompose" in heads  # the API reference from the docstrings
    figures = (tmp_path / "figures" / "index.html").read_text()
    assert "external centre centre_c" in figures  # the snippets are included, not left as markers
    assert "--8&lt;--" not in figures and "--8<--" not in figures
