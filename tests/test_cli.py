import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from fusion_model.cli import app
from tests.helpers import edit_table, write_cohort

runner = CliRunner()


def run_cli(*args):
    """Run the real console entry point (for exit codes and stderr).

    Decoded as UTF-8 explicitly: a library imported by other tests may reset this process's
    locale to "C", which would make text=True decode rich's output as ASCII.
    """
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "fusion_model.cli", *map(str, args)], capture_output=True,
                          encoding="utf-8", env=env)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "synth", "import-medmnist", "features", "preprocess", "schema", "demo"):
        assert command in result.output


def test_validate_clean_and_broken_cohort(tmp_path):
    root = write_cohort(tmp_path / "c")
    ok = run_cli("validate", root, "--json", tmp_path / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True
    edit_table(root, size_mm={0: "-2"})
    bad = run_cli("validate", root)
    assert bad.returncode == 2
    assert "size_mm" in bad.stdout and "row 2" in bad.stdout
    assert bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_user_error_is_one_line_exit_2(tmp_path):
    result = run_cli("validate", tmp_path / "nowhere")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_cli("synth", "--out", tmp_path / "x", "--phases", "portal")
    assert result.returncode == 2 and "phases" in result.stderr and "Traceback" not in result.stderr


def test_schema_export(tmp_path):
    assert run_cli("schema", "--format", "json", "--out", tmp_path / "s.json").returncode == 0
    assert "properties" in json.loads((tmp_path / "s.json").read_text())
    result = run_cli("schema")
    assert result.returncode == 0 and "| `unenhanced_hu` |" in result.stdout


def test_preprocess_second_run_reads_the_cache(tmp_path):
    root = write_cohort(tmp_path / "c")
    env_cache = tmp_path / "cache"
    first = run_cli("preprocess", root, "--cache", env_cache, "--crop-mm", "16")
    assert first.returncode == 0 and "0 from cache, 3 computed" in " ".join(first.stdout.split())
    second = run_cli("preprocess", root, "--cache", env_cache, "--crop-mm", "16")
    assert "3 from cache, 0 computed" in " ".join(second.stdout.split())


def test_features_command_fills_missing_values(tmp_path):
    root = write_cohort(tmp_path / "c")
    edit_table(root, size_mm={0: ""}, unenhanced_hu={0: ""})
    result = run_cli("features", root, "--out", tmp_path / "f.csv")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    features = pd.read_csv(tmp_path / "f.csv").set_index("lesion_id")
    assert features.loc["P1-L1", "unenhanced_hu"] == features.loc["P1-L1", "unenhanced_mean_hu"]
    assert features.loc["P1-L1", "size_mm"] > 0


def test_demo_synthesises_and_validates(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "--patients", "6")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo/cohort/clinical.csv").is_file()
    assert "valid" in result.stdout
