"""Encoder pre-training on generator-drawn lesions: the drawn crops, the targets, learning, the weight file,
fine-tuning from it, and the refusals."""

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from fusion_model.config import ExperimentConfig, PretrainConfig
from fusion_model.encoder.pretrain import pretrain_encoder
from fusion_model.encoder.weights import check_pretrained, load_pretrained, save_pretrained
from fusion_model.synthetic.pretraining import (
    NORMAL_GLAND,
    DrawSettings,
    binary_targets,
    draw_example,
    regression_targets,
    type_names,
)
from fusion_model.encoder.train import build_network, train_encoder
from fusion_model.errors import UserInputError
from tests.test_cli import run_cli

SMALL = {"name": "small", "seed": 0, "preprocess": {"spacing_mm": 2.0, "crop_size_mm": 48},
         "encoder": {"width": 4, "depth": 2, "stem_stride": 2, "embedding_size": 8, "batch_size": 16, "epochs": 1,
                     "tta_views": 1}}


def experiment(**encoder) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**SMALL, "encoder": {**SMALL["encoder"], **encoder}})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Mask-only lesion outlines, 24^3 crops at 2 mm: a short pre-training and its weight file."""
    result = pretrain_encoder(experiment(), PretrainConfig(examples=400, epochs=6, learning_rate=0.01,
                                                           workers=1), progress=False)
    path = save_pretrained(result.model, result.metadata, tmp_path_factory.mktemp("pretrained") / "lesions.safetensors")
    return result, path


def test_drawn_crops_have_the_experiment_geometry_and_come_back_the_same():
    ct = DrawSettings(("unenhanced", "venous"), False, 24, 2.0, (-200.0, 300.0), "lesion", 0.5)
    first, again = draw_example(3, 11, ct), draw_example(3, 11, ct)
    assert first.crop.shape == (3, 24, 24, 24) and first.crop.dtype == np.float16
    np.testing.assert_array_equal(first.crop, again.crop)
    np.testing.assert_array_equal(first.regression, again.regression)
    assert not np.array_equal(first.crop, draw_example(4, 11, ct).crop)
    assert 0 <= first.crop.min() and first.crop.max() <= 1
    mask = first.crop[-1].astype(bool)
    assert set(np.unique(first.crop[-1])) <= {0, 1} and mask.any()
    # cut around the mask's centroid, as the pipeline cuts its crops (unless the lesion outgrows the crop)
    if mask.sum() < 0.5 * mask.size:
        assert np.abs(np.asarray(ndimage.center_of_mass(mask)) - 11.5).max() <= 1.5
    # the unenhanced channel holds the lesion's latent attenuation (noise and blur aside) inside the outline
    core = ndimage.binary_erosion(mask, iterations=1)
    names = regression_targets(["unenhanced", "venous"])
    if core.sum() > 20 and not first.binary[1:].any():  # no calcification or fat to shift the mean
        measured_hu = -200 + 500 * first.crop[0][core].astype(float).mean()
        assert abs(measured_hu - first.regression[names.index("unenhanced_hu")]) < 15


def test_gland_outlines_include_normal_glands_without_lesion_values():
    settings = DrawSettings((), True, 32, 1.5, (-200.0, 300.0), "gland", 0.5)
    examples = [draw_example(i, 5, settings) for i in range(16)]
    is_normal = [e.type_index == type_names("gland").index(NORMAL_GLAND) for e in examples]
    normal = [e for e, n in zip(examples, is_normal) if n]
    with_lesion = [e for e, n in zip(examples, is_normal) if not n]
    assert normal and with_lesion
    assert all(np.isnan(e.regression).all() and e.malignant == 0 for e in normal)
    assert all(np.isfinite(e.regression).all() for e in with_lesion)
    # a normal gland is thin limbs: depth (channel 0, mm / 16) stays within a few millimetres of the outline
    assert max(float(e.crop[0].max()) for e in normal) * 16 < 5
    assert all(e.crop.shape == (2, 32, 32, 32) for e in examples)


def test_targets_are_what_the_channels_show():
    assert regression_targets([]) == ["log_size_mm", "axis_ratio_mid", "axis_ratio_least", "irregularity"]
    assert binary_targets([]) == []
    ct = regression_targets(["unenhanced", "venous", "delayed"])
    assert {"unenhanced_hu", "venous_hu", "venous_enhancement_hu", "delayed_enhancement_hu", "washout_fraction",
            "texture_sd_hu"} <= set(ct)
    assert "venous_enhancement_hu" not in regression_targets(["venous"])  # needs the unenhanced phase
    assert len(type_names("lesion")) == 8 and type_names("gland")[-1] == NORMAL_GLAND


def test_pretraining_learns_the_lesions_size_and_shape(pretrained):
    result, _ = pretrained
    figures = result.figures
    assert figures["held_out_examples"] == 40 and figures["training_examples"] == 360
    assert figures["r2"]["log_size_mm"] > 0.6  # read from a mask-only crop of 24^3 voxels
    assert figures["history"][-1]["train_loss"] < figures["history"][0]["train_loss"]
    assert figures["auc"]["malignant"] > 0.65  # size carries malignancy in the generator


def test_the_same_settings_give_the_same_weights(tmp_path):
    settings = PretrainConfig(phases=["venous"], examples=40, epochs=1, workers=1)
    first, second = (pretrain_encoder(experiment(), settings, progress=False) for _ in range(2))
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert first.figures["r2"] == second.figures["r2"]
    # drawn in two worker processes, the examples are the same as drawn in one
    from fusion_model.encoder.pretrain import crop_settings
    from fusion_model.synthetic.pretraining import draw_set

    draw = crop_settings(experiment(), settings)
    np.testing.assert_array_equal(draw_set(70, 3, draw, workers=1, progress=False).crops,
                                  draw_set(70, 3, draw, workers=2, progress=False).crops)


def test_the_weight_file_restores_the_network_but_not_its_malignancy_layer(pretrained):
    result, path = pretrained
    config = experiment(pretrained=str(path))
    check_pretrained(config, ["mask"])
    torch.manual_seed(123)
    network = build_network(config.encoder, ["mask"])
    fresh_head = network.head[1].weight.detach().clone()
    load_pretrained(network, path)
    trained = result.model.state_dict()
    for name, value in network.state_dict().items():
        if name.startswith("head."):
            assert torch.equal(value, fresh_head) if name == "head.1.weight" else True
        else:
            assert torch.equal(value, trained[name]), name
    assert not torch.equal(fresh_head, trained["head.1.weight"])


def test_fine_tuning_starts_from_the_weight_file(pretrained):
    _, path = pretrained
    rng = np.random.default_rng(0)
    crops = (rng.random((12, 1, 24, 24, 24)) < 0.2).astype(np.float16)
    labels = np.arange(12) % 2
    stem = build_network(experiment().encoder, ["mask"])
    load_pretrained(stem, path)
    expected = stem.features[0][0].weight.detach()
    # a learning rate too small to move the weights: what is returned is where training started
    config = experiment(pretrained=str(path), learning_rate=1e-12, input_skip=False).encoder
    result = train_encoder(crops, labels, np.arange(12), None, config, epochs=1, progress=False)
    torch.testing.assert_close(result.model.features[0][0].weight.detach(), expected, atol=1e-6, rtol=0)
    scratch = train_encoder(crops, labels, np.arange(12), None, experiment(learning_rate=1e-12,
                                                                           input_skip=False).encoder,
                            epochs=1, progress=False)
    assert not torch.allclose(scratch.model.features[0][0].weight, expected)
    # the fingerprint (checkpoint and cache keys) follows the file's content, not only its name
    assert config.fingerprint() != config.model_copy(update={"pretrained": None}).fingerprint()


def test_mismatched_or_unreadable_weight_files_are_refused(pretrained, tmp_path):
    _, path = pretrained
    with pytest.raises(UserInputError, match=r"encoder\.width: 4 in the file, 8 here"):
        check_pretrained(experiment(pretrained=str(path), width=8), ["mask"])
    with pytest.raises(UserInputError, match=r"crop channels \['mask'\] in the file, \['venous', 'mask'\]"):
        check_pretrained(experiment(pretrained=str(path)), ["venous", "mask"])
    other_geometry = ExperimentConfig.model_validate({**SMALL, "preprocess": {"spacing_mm": 1.0, "crop_size_mm": 48},
                                                      "encoder": {**SMALL["encoder"], "pretrained": str(path)}})
    with pytest.raises(UserInputError, match="24\\^3 voxels at 2 mm in the file, 48\\^3 at 1 mm here"):
        check_pretrained(other_geometry, ["mask"])
    other_window = ExperimentConfig.model_validate({**SMALL, "preprocess": {**SMALL["preprocess"],
                                                                             "hu_window": [-100, 200]},
                                                    "encoder": {**SMALL["encoder"], "pretrained": str(path)}})
    check_pretrained(other_window, ["mask"])  # mask-only crops: the HU window does not matter
    with pytest.raises(UserInputError, match="does not exist"):
        check_pretrained(experiment(pretrained=str(tmp_path / "missing.safetensors")), ["mask"])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weight file")
    with pytest.raises(UserInputError, match="is not a weight file"):
        check_pretrained(experiment(pretrained=str(junk)), ["mask"])
    with pytest.raises(UserInputError, match="does not fit this network"):
        load_pretrained(build_network(experiment(width=8).encoder, ["mask"]), path)


def test_cli_writes_the_weight_file_and_refuses_to_overwrite_it(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "w.safetensors"
    args = ["pretrain-encoder", "--config", config, "--out", out, "--phase", "venous", "--examples", "24",
            "--epochs", "1", "--workers", "1"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "venous_hu" in result.stdout and out.is_file()
    written = out.read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists" in again.stderr and out.read_bytes() == written
    for bad, message in ((["--out", tmp_path / "w.pt"], "name the weight file"),
                         (["--outline", "organ"], "outline"), (["--phase", "portal"], "unknown phase")):
        result = run_cli(*args, *bad)  # an option given twice: the last one counts
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.slow
def test_training_fine_tunes_from_a_weight_file_and_the_artifact_records_it(synthetic_cohort, tmp_path):
    import json

    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.fileio import sha256_file
    from fusion_model.imaging.cache import ImageCache
    from tests.conftest import TINY_EXPERIMENT

    tiny = ExperimentConfig.model_validate({**TINY_EXPERIMENT, "encoder": {**TINY_EXPERIMENT["encoder"], "epochs": 1}})
    cache = ImageCache(tmp_path / "cache")

    def with_weights(phases: list[str], name: str) -> ExperimentConfig:
        result = pretrain_encoder(tiny, PretrainConfig(phases=phases, examples=40, epochs=1, workers=1),
                                  progress=False)
        path = save_pretrained(result.model, result.metadata, tmp_path / name)
        return tiny.model_copy(update={"encoder": tiny.encoder.model_copy(update={"pretrained": str(path)})})

    # the synthetic cohort's crops are (unenhanced, venous, mask): weights for venous crops are refused at once
    with pytest.raises(UserInputError, match=r"crop channels \['venous', 'mask'\] in the file"):
        pipeline.train(with_weights(["venous"], "venous.safetensors"), synthetic_cohort, tmp_path / "refused", cache,
                       progress=False)
    assert not (tmp_path / "refused").exists()
    config = with_weights(["unenhanced", "venous"], "ct.safetensors")
    pipeline.train(config, synthetic_cohort, tmp_path / "model", cache, progress=False)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    recorded = manifest["encoder"]["pretrained"]
    assert recorded["sha256"] == sha256_file(tmp_path / "ct.safetensors")
    assert recorded["settings"]["phases"] == ["unenhanced", "venous"] and "r2" in recorded["figures"]
    # the artifact holds its own networks: it loads and scores without the weight file
    (tmp_path / "ct.safetensors").unlink()
    assert len(load_model(tmp_path / "model").encoder_.fold_models_) == 3


def test_settings_a_weight_file_cannot_serve_are_refused_in_the_experiment():
    for extra, message in (({"compare_phases": True}, "compare_phases with encoder.pretrained"),
                           ({"encoder": {**SMALL["encoder"], "kind": "2.5d"}}, "needs encoder.kind 3d"),
                           ({"search": {"params": {"encoder.width": {"type": "categorical", "choices": [4, 8]}}}},
                            r"search.params \['encoder.width'\] change the network's shape")):
        data = {**SMALL, "encoder": {**SMALL["encoder"], "pretrained": "w.safetensors"}, **extra}
        data["encoder"] = {**data["encoder"], "pretrained": "w.safetensors"}
        with pytest.raises(ValueError, match=message):
            ExperimentConfig.model_validate(data)
    with pytest.raises(UserInputError, match="encoder.kind is '2.5d'"):
        pretrain_encoder(experiment(kind="2.5d"), PretrainConfig(examples=20, workers=1), progress=False)


def test_more_draws_than_memory_holds_are_refused_before_drawing(monkeypatch):
    from fusion_model.encoder import pretrain

    monkeypatch.setattr(pretrain, "_memory_bytes", lambda: 2**30)
    monkeypatch.setattr(pretrain, "draw_set", lambda *a, **k: pytest.fail("drew lesions"))
    with pytest.raises(UserInputError, match=r"--examples 50000: their crops \(1 x 24\^3 voxels each\) would take "
                                             r"1\.3 GiB of this machine's 1 GiB; draw at most 23301"):
        pretrain_encoder(experiment(), PretrainConfig(examples=50000), progress=False)


def test_a_ct_weight_file_must_share_the_hu_window(pretrained, monkeypatch):
    from fusion_model.encoder import weights

    _, path = pretrained
    metadata = weights.read_pretrained_metadata(path)
    ct_file = {**metadata, "channels": ["venous", "mask"], "hu_window": [-100.0, 200.0]}
    monkeypatch.setattr(weights, "read_pretrained_metadata", lambda *a, **k: ct_file)
    with pytest.raises(UserInputError, match=r"HU window \[-100.0, 200.0\] in the file, \[-200.0, 300.0\] here"):
        check_pretrained(experiment(pretrained=str(path)), ["venous", "mask"])
    ct_file["hu_window"] = [-200, 300]
    check_pretrained(experiment(pretrained=str(path)), ["venous", "mask"])
