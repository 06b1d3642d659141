"""The Dask engine of the per-lesion passes: same results as one process, a killed worker's tasks redone, and the
cluster's failures (no scheduler, other versions, no shared filesystem, a cache it cannot write) as one line."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fusion_model.cli import app
from fusion_model.cohort import load_cohort
from fusion_model.config import PreprocessConfig
from fusion_model.engine import Engine, EngineSettings, version_mismatches
from fusion_model.errors import UserInputError
from fusion_model.imaging.cache import ImageCache

CONFIG = PreprocessConfig(spacing_mm=3.0, crop_size_mm=48)


def _cache_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort_with_a_broken_mask(synthetic_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "cohort"
    shutil.copytree(synthetic_cohort, root)
    table = pd.read_csv(root / "clinical.csv")
    (root / table["mask_path"][3]).write_bytes(b"not a NIfTI file")
    return root


def _extract(cohort_dir: Path, cache_dir: Path, engine: Engine):
    cache = ImageCache(cache_dir)
    images = load_cohort(cohort_dir).images(CONFIG, cache, progress=False, engine=engine)
    return images, cache


@pytest.fixture(scope="module")
def serial_pass(cohort_with_a_broken_mask, tmp_path_factory):
    """The pass in this process: the results every engine must give, and its cache."""
    cache_dir = tmp_path_factory.mktemp("serial-cache")
    images, cache = _extract(cohort_with_a_broken_mask, cache_dir, Engine())
    return images, cache, cache_dir


def test_a_local_cluster_gives_the_single_process_results_byte_for_byte(local_cluster, cohort_with_a_broken_mask,
                                                                        serial_pass, tmp_path):
    serial, serial_cache, serial_dir = serial_pass
    assert local_cluster.workers == 2
    parallel, parallel_cache = _extract(cohort_with_a_broken_mask, tmp_path / "parallel", local_cluster)
    assert serial.lesion_ids == parallel.lesion_ids and len(serial.lesion_ids) > 20
    assert np.array_equal(serial.crops, parallel.crops)
    pd.testing.assert_frame_equal(serial.features, parallel.features)
    # the unreadable lesion is collected as in one process: same row, same message
    assert [e.__dict__ for e in serial.errors] == [e.__dict__ for e in parallel.errors] and len(serial.errors) == 1
    assert serial.errors[0].row == 5 and "mask" in serial.errors[0].message.lower()
    assert _cache_files(serial_dir) == _cache_files(tmp_path / "parallel")
    assert (parallel_cache.misses, parallel_cache.hits) == (serial_cache.misses, serial_cache.hits) != (0, 0)
    again, cache = _extract(cohort_with_a_broken_mask, tmp_path / "parallel", local_cluster)  # reads the cache
    assert cache.misses == 0 and cache.hits > 0 and np.array_equal(again.crops, serial.crops)


def test_a_worker_killed_mid_pass_has_its_tasks_redone(cohort_with_a_broken_mask, serial_pass, tmp_path):
    serial, _, serial_dir = serial_pass
    cache_dir = tmp_path / "killed"
    killed: dict = {}
    with Engine(EngineSettings(workers=2)) as engine:
        pids = engine.client.run(os.getpid)
        victim = sorted(pids.values())[0]
        entries = cache_dir / "images"

        def kill_when_started() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = len(list(entries.rglob("*.npy"))) if entries.exists() else 0
                if done >= 2:
                    killed["entries_at_kill"] = done
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        parallel, _ = _extract(cohort_with_a_broken_mask, cache_dir, engine)
        killer.join()
        assert victim not in engine.client.run(os.getpid).values()  # the nanny started a new worker
    assert killed["entries_at_kill"] < len(serial.lesion_ids)  # it died in the middle of the pass
    assert parallel.lesion_ids == serial.lesion_ids and np.array_equal(parallel.crops, serial.crops)
    pd.testing.assert_frame_equal(parallel.features, serial.features)
    assert _cache_files(cache_dir) == _cache_files(serial_dir)  # nothing half-written left behind


def test_engine_settings_are_checked():
    with pytest.raises(UserInputError, match="give one"):
        EngineSettings(workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(UserInputError, match="at least 1"):
        EngineSettings(workers=0)
    assert not EngineSettings().distributed and EngineSettings(workers=1).distributed


def test_an_unreachable_scheduler_is_one_line(monkeypatch):
    import fusion_model.engine as engine_module

    monkeypatch.setattr(engine_module, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(UserInputError, match=r"--scheduler tcp://127.0.0.1:9: no Dask scheduler answered"):
        Engine(EngineSettings(scheduler="tcp://127.0.0.1:9")).__enter__()


def test_workers_without_the_files_or_a_writable_cache_are_refused_before_the_pass(local_cluster, tmp_path):
    missing = tmp_path / "only-on-the-client"
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    with pytest.raises(UserInputError, match=r"worker tcp://.* cannot see the cohort's folder .*only-on-the-client"):
        local_cluster.check_paths([missing], "the cohort's folder")
    with pytest.raises(UserInputError, match=r"the image cache .*a-file/cache is not writable"):
        local_cluster.check_writable([not_a_folder / "cache"], "the image cache")
    local_cluster.check_paths([tmp_path], "the cohort's folder")  # what they can see passes


def test_version_mismatch_is_one_sentence():
    here = {"numpy": "2.1.0", "fusion-model": "0.1.0"}
    workers = {"tcp://10.0.0.2:4000": {"numpy": "1.26.4", "fusion-model": "0.1.0"},
               "tcp://10.0.0.3:4000": {"numpy": "1.26.4", "fusion-model": "0.1.0"}}
    message = version_mismatches(here, workers)
    assert message.startswith("the Dask workers run other package versions than this process (numpy 2.1.0 here, "
                              "1.26.4 on tcp://10.0.0.2:4000 and 1 more)")
    assert "\n" not in message and version_mismatches(here, {"w": dict(here)}) is None


def test_cli_preprocess_on_workers_and_its_bad_engine_options(synthetic_cohort, tmp_path):
    from tests.test_cli import run_cli

    result = CliRunner().invoke(app, ["preprocess", str(synthetic_cohort), "--cache", str(tmp_path / "c"),
                                      "--workers", "2", "--spacing-mm", "4", "--crop-mm", "32"])
    assert result.exit_code == 0, result.output
    assert "0 from cache" in result.output and "0 unreadable" in result.output
    for options, message in ((["--workers", "2", "--scheduler", "tcp://x:1"], "give one"),
                             (["--workers", "0"], "at least 1")):
        result = run_cli("preprocess", synthetic_cohort, "--cache", tmp_path / "c", *options)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_validate_on_workers_finds_what_one_process_finds(local_cluster, cohort_with_a_broken_mask):
    from fusion_model.cohort import validate_cohort

    serial = validate_cohort(cohort_with_a_broken_mask, progress=False)
    parallel = validate_cohort(cohort_with_a_broken_mask, progress=False, engine=local_cluster)
    assert not serial.ok and len(serial.errors) == 1 and "row 5" in serial.errors[0].where
    assert parallel.problems == serial.problems and parallel.summary == serial.summary


def test_workers_reuse_freed_memory_instead_of_mapping_fresh_pages(local_cluster):
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which leaves every volume-sized array a fresh mapping
    the kernel must fault in; the engine's worker plugin lets malloc keep and reuse freed memory."""
    assert local_cluster.client.run(_faults_of_repeated_volumes) == {
        worker: 0 for worker in local_cluster.client.scheduler_info()["workers"]}


def _faults_of_repeated_volumes() -> int:
    """Page faults of allocating, filling and freeing a 3 MB array (a small CT volume; under the 4 MB from which numpy
    asks for huge pages) ten times after a first time: about 7,000 when each is a fresh mapping, 0 when freed memory
    is reused."""
    import resource

    np.ones(375_000).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        np.ones(375_000).sum()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before - 100)  # a little for the rest
