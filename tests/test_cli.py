import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
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


COMMANDS = ("validate", "synth", "import-dicom", "import-medmnist", "features", "preprocess", "train", "predict", "evaluate",
            "explain", "tune", "schema", "demo", "agreement", "pretrain-encoder")


def test_help_lists_every_command_and_each_has_its_own_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = {line.strip("│ ").split(" ")[0] for line in result.output.splitlines()}
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed
    named = {g.name: g.typer_instance for g in app.registered_groups if isinstance(g.name, str)}
    mounted = [g.typer_instance for g in app.registered_groups if not isinstance(g.name, str)]  # the subpackages'
    registered = {c.name or c.callback.__name__.replace("_", "-") for sub in mounted for c in sub.registered_commands}
    assert not app.registered_commands, "cli.py assembles: a command belongs in its subpackage's commands.py"
    assert registered == set(COMMANDS), "a command was added: list it here and in the README"
    for command in COMMANDS:
        assert runner.invoke(app, [command, "--help"]).exit_code == 0, command
    groups = named
    assert set(groups) == {"segment", "reader-study"} and {"segment", "reader-study"} <= listed
    expected = {"segment": {"train", "predict", "evaluate"},
                "reader-study": {"prepare", "serve", "simulate", "analyze"}}
    for group, commands in expected.items():
        registered = {c.name or c.callback.__name__ for c in groups[group].registered_commands}
        assert registered == commands, group
        for command in commands:
            assert runner.invoke(app, [group, command, "--help"]).exit_code == 0, (group, command)


def test_predict_command_writes_every_readable_lesion_and_names_the_rest(trained_model, tmp_path):
    import pandas as pd

    cohort = tmp_path / "cohort"
    shutil.copytree(trained_model["test_cohort"], cohort)
    table = pd.read_csv(cohort / "clinical.csv")
    table = table.drop(columns=["label"])
    table.loc[2, "mask_path"] = "masks/missing.nii.gz"
    table.to_csv(cohort / "clinical.csv", index=False)
    out = tmp_path / "predictions.csv"
    result = run_cli("predict", "--model", trained_model["model"], "--cohort", cohort, "--out", out,
                     "--cache", trained_model["cache"])
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(out)
    assert len(predictions) == len(table) - 1
    assert table.loc[2, "lesion_id"] not in set(predictions["lesion_id"])
    assert {"probability", "variant", "suspicious_at_youden", "p_imaging", "p_all", "rule_hu_10"} <= set(predictions)
    assert predictions["probability"].between(0, 1).all() and (predictions["variant"] == "all").all()
    np.testing.assert_allclose(predictions["probability"], predictions["p_all"])
    assert table.loc[2, "lesion_id"] in result.stdout and "missing.nii.gz" in result.stdout
    assert "'targets: [malignancy, lesion_type]'" in result.stdout  # the hint keeps its brackets
    errors = pd.read_csv(tmp_path / "predictions_errors.csv")
    assert errors["lesion_id"].tolist() == [table.loc[2, "lesion_id"]]
    missing = run_cli("predict", "--model", tmp_path / "nothing", "--cohort", cohort, "--out", tmp_path / "x.csv")
    assert missing.returncode == 2 and "not a fusion-model artifact" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.csv").exists()


def test_validate_clean_and_broken_cohort(tmp_path):
    root = write_cohort(tmp_path / "c")
    ok = run_cli("validate", root, "--json", tmp_path / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["ok"] is True
    edit_table(root, size_mm={0: "-2"})
    bad = run_cli("validate", root)
    assert bad.returncode == 2
    assert "size_mm" in bad.stdout and "row 2" in bad.stdout
    assert bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_text_in_square_brackets_is_printed_as_written(tmp_path):
    """Console output has no markup: paths, values and hints with square brackets keep them."""
    root = write_cohort(tmp_path / "[centre x] cohort")
    edit_table(root, size_mm={0: "[12]"})
    bad = run_cli("validate", root)
    assert bad.returncode == 2
    assert "[12]" in bad.stdout and "[centre x] cohort" in bad.stderr
    missing = run_cli("validate", tmp_path / "[nowhere]")
    assert missing.returncode == 2 and "[nowhere]" in missing.stderr


def test_user_error_is_one_line_exit_2(tmp_path):
    result = run_cli("validate", tmp_path / "nowhere")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_cli("synth", "--out", tmp_path / "x", "--phases", "portal")
    assert result.returncode == 2 and "phases" in result.stderr and "Traceback" not in result.stderr


# the command under test, and then which network libraries it had loaded when it stopped
_PROBE = ("import sys\nfrom fusion_model.cli import main\nsys.argv = ['fusion-model', *sys.argv[1:]]\ntry:\n"
          "    main()\nfinally:\n    print('loaded:', sorted({'torch', 'monai'} & set(sys.modules)))")


def _fake_model(folder, segmenter=False):
    """A folder whose manifest passes the commands' early check (and nothing else)."""
    from clinical_schema import SCHEMA_VERSION
    from fusion_model import __version__
    from fusion_model.fileio import sha256_file

    folder.mkdir()
    if segmenter:
        (folder / "segmenter.json").write_text(json.dumps({"format": "fusion-model-segmenter", "format_version": 2}))
        return folder
    (folder / "manifest.json").write_text(json.dumps({
        "format": "fusion-model-artifact", "format_version": 5, "schema_version": SCHEMA_VERSION,
        "package_version": __version__, "files": {}}))
    (folder / "manifest.sha256").write_text(sha256_file(folder / "manifest.json"))
    return folder


def test_scoring_and_segmenting_commands_refuse_what_was_typed_before_loading_torch(tmp_path):
    """A wrong folder, an existing output or an unknown centre is answered in one line, exit 2, before torch and
    MONAI are imported (seconds on a laptop): the checks the work starts with, run first."""
    cohort = write_cohort(tmp_path / "cohort", n_lesions=2)
    model, segmenter = _fake_model(tmp_path / "model"), _fake_model(tmp_path / "segmenter", segmenter=True)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "report.html").write_text("an earlier report")
    nowhere = tmp_path / "nowhere"
    cases = [
        (["predict", "--model", nowhere, "--cohort", cohort, "--out", tmp_path / "p.csv"], "not a fusion-model artifact"),
        (["predict", "--model", model, "--cohort", nowhere, "--out", tmp_path / "p.csv"], "not a directory"),
        (["evaluate", "--model", model, "--cohort", cohort, "--out", taken], "already exists"),
        (["evaluate", "--model", model, "--cohort", cohort, "--centre", "Z", "--out", tmp_path / "e"],
         "centre 'Z' is not in"),
        (["explain", "--model", nowhere, "--cohort", cohort, "--out", tmp_path / "x"], "not a fusion-model artifact"),
        (["explain", "--model", model, "--cohort", cohort, "--out", taken], "already exists"),
        (["segment", "predict", "--model", model, "--cohort", cohort, "--out", tmp_path / "s"], "not a segmenter"),
        (["segment", "predict", "--model", segmenter, "--cohort", cohort, "--centre", "Z", "--out", tmp_path / "s"],
         "centre 'Z' is not in"),
        (["segment", "evaluate", "--model", segmenter, "--cohort", nowhere, "--out", tmp_path / "r"], "not a directory"),
        (["segment", "train", "--cohort", cohort, "--out", taken], "already exists"),
        (["segment", "train", "--cohort", cohort, "--test-centre", "Z", "--out", tmp_path / "t"], "centre 'Z' is not in"),
    ]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True,
                                encoding="utf-8", env=env)
        said = " ".join(args[:2]) + ": " + result.stderr
        assert result.returncode == 2, said
        assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, said
        assert message in result.stderr, said
        assert "loaded: []" in result.stdout, said
    assert (taken / "report.html").read_text() == "an earlier report"
    assert not any((tmp_path / name).exists() for name in ("p.csv", "e", "x", "s", "r", "t"))


def test_schema_export(tmp_path):
    assert run_cli("schema", "--format", "json", "--out", tmp_path / "s.json").returncode == 0
    assert "properties" in json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
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


@pytest.mark.slow
def test_demo_end_to_end_at_a_reduced_size(tmp_path):
    """The README's main command, small: every output it announces exists and parses."""
    import csv
    import html.parser

    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out, "--patients", "48", "--epochs", "2", "--bootstrap", "200")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["lesions"]["external"] > 0 and summary["lesions"]["training"] > summary["lesions"]["external"]
    announced = summary["outputs"]
    assert {"evaluation_report", "evaluation_metrics", "case_review", "model_manifest"} <= set(announced)
    for name, path in announced.items():
        assert path in result.stdout, f"{name} not announced"
        text_or_bytes = open(path, "rb").read()
        if path.endswith(".json"):
            json.loads(text_or_bytes)
        elif path.endswith(".csv"):
            assert len(list(csv.reader(text_or_bytes.decode().splitlines()))) > 1
        elif path.endswith(".html"):
            html.parser.HTMLParser().feed(text_or_bytes.decode())
            assert "</html>" in text_or_bytes.decode()
        elif path.endswith(".png"):
            assert text_or_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(open(announced["evaluation_metrics"]).read())
    assert set(summary["external_auc"]) == set(metrics["models"])
    assert summary["external_oracle_auc"]["value"] > 0.5
    for variant in ("imaging", "all", "hu_10"):
        assert variant in result.stdout
    assert "oracle" in result.stdout
    assert "reader agreement on" in result.stdout and summary["agreement"]["lesions"] == summary["lesions"]["external"]


def test_demo_on_a_missing_gpu_is_one_line_exit_2_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = run_cli("demo", "--out", tmp_path / "demo", "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--device cuda" in result.stderr and "no CUDA device" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_train_on_a_missing_gpu_is_one_line_exit_2_before_any_work(trained_model, tmp_path):
    import torch
    import yaml

    from tests.conftest import TINY_EXPERIMENT

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump(TINY_EXPERIMENT))
    result = run_cli("train", "--config", config, "--cohort", trained_model["train_cohort"], "--out",
                     tmp_path / "m", "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--device cuda" in result.stderr and "no CUDA device" in result.stderr
    assert not (tmp_path / "m").exists()
