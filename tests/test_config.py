"""Configuration is data: importable without torch, SimpleITK or XGBoost; one source for shipped configs."""

import subprocess
import sys

import pytest
import yaml

from fusion_model.config import ExperimentConfig, SynthConfig, load_experiment, packaged_experiment
from fusion_model.configbase import parse_model
from fusion_model.errors import UserInputError


def test_config_imports_without_torch_simpleitk_or_xgboost():
    code = ("import sys\n"
            "for name in ('torch', 'SimpleITK', 'xgboost', 'monai'):\n"
            "    sys.modules[name] = None  # importing it now raises ImportError\n"
            "from fusion_model.config import load_experiment, packaged_experiment\n"
            "from fusion_model.catalogue import VARIANTS, GUIDELINE_RULES\n"
            "config = load_experiment(packaged_experiment('synthetic_demo.yaml'))\n"
            "assert config.encoder.epochs > 0\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("key, value, points_to", [("folds", 3, "split.folds"), ("seed", 1, "seed")])
def test_encoder_folds_and_seed_are_refused_with_where_they_belong(tmp_path, key, value, points_to):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"encoder": {"width": 8, key: value}}))
    with pytest.raises(UserInputError, match=f"encoder.{key} is not a setting.*{points_to}"):
        load_experiment(path)


def test_the_demo_runs_the_shipped_experiment_file():
    from fusion_model.demo import demo_experiment

    shipped = load_experiment(packaged_experiment("synthetic_demo.yaml"))
    assert demo_experiment() == shipped
    assert demo_experiment({"encoder": {"epochs": 2}}).encoder.epochs == 2
    assert demo_experiment({"encoder": {"epochs": 2}}).encoder.width == shipped.encoder.width


def test_packaged_experiments_are_the_repository_files():
    from pathlib import Path

    from fusion_model.config import SegmentConfig, load_segment_config

    repository = Path(__file__).parents[1] / "experiments"
    for path in sorted(repository.glob("*.yaml")):
        assert packaged_experiment(path.name).read_bytes() == path.read_bytes()
        if path.name == "segment.yaml":  # the segmenter's settings, not an experiment: every key at its default
            assert load_segment_config(path) == SegmentConfig()
        else:
            load_experiment(path)
    with pytest.raises(UserInputError, match="missing from this installation"):
        packaged_experiment("nothing.yaml")


def test_synthetic_centre_count_matches_the_generator():
    from fusion_model.config import SYNTH_CENTRES
    from fusion_model.synthetic.generate import CENTRES

    assert len(CENTRES) == SYNTH_CENTRES
    with pytest.raises(UserInputError, match="centres"):
        parse_model(SynthConfig, {"centres": SYNTH_CENTRES + 1}, "synth")


def test_variant_and_rule_names_come_from_the_catalogue():
    from fusion_model.catalogue import GUIDELINE_RULES, VARIANTS

    config = ExperimentConfig()
    assert config.variants == list(VARIANTS) and config.baselines == list(GUIDELINE_RULES)
    with pytest.raises(UserInputError, match="unknown variant"):
        parse_model(ExperimentConfig, {"variants": ["imaging", "radiomics"]}, "test")


def test_depth_channel_and_the_per_phase_comparison_are_refused_together():
    with pytest.raises(ValueError, match="compare_phases with preprocess.depth_channel"):
        ExperimentConfig(compare_phases=True, preprocess={"depth_channel": True})
