"""reader-study prepare / serve (the application, through its HTTP interface) / simulate / analyze on a study
made from the tiny trained model and its external synthetic cohort."""

import datetime as dt
import gzip
import json
import shutil
import socket

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fusion_model.errors import UserInputError
from fusion_model.reader_study.design import STUDY_FILE, load_study
from fusion_model.reader_study.mrmc import read_ratings_csv
from fusion_model.reader_study.store import Answer, AnswerStore
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def prepared(trained_model, tmp_path_factory):
    """A crossover study (4 readers, 12 cases, no washout) and its tokens."""
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.reader_study.prepare import prepare_study

    out = tmp_path_factory.mktemp("reader-study") / "study"
    result = prepare_study(trained_model["model"], trained_model["test_cohort"], out, ["R1", "R2", "R3", "R4"],
                           ImageCache(trained_model["cache"]), cases=12, seed=3, washout_days=0, progress=False)
    return out, result


def fresh_copy(prepared, tmp_path):
    study, result = prepared
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    return copy, result.tokens


def client_for(study, reader=None, token=None, clock=None):
    from fastapi.testclient import TestClient

    from fusion_model.reader_study.app import create_app

    client = TestClient(create_app(study, clock=clock))
    if reader:
        response = client.post("/login", data={"code": reader, "token": token}, follow_redirects=False)
        assert response.status_code == 303
    return client


def answer_form(session, position, likelihood=70, scale5=4, lesion_type="adenoma", confidence=3):
    return {"session": session, "position": position, "likelihood": likelihood, "scale5": scale5,
            "lesion_type": lesion_type, "confidence": confidence}


def test_prepare_writes_a_blinded_balanced_study(prepared, trained_model):
    study_dir, result = prepared
    study = load_study(study_dir)
    key = pd.read_csv(study_dir / "private" / "key.csv", dtype=str)
    assert result.cases == len(study.cases) == 12 and 2 <= result.malignant <= 10
    served = study_dir / "cases"
    identifiers = set(key["lesion_id"]) | set(key["patient_id"])
    text = (study_dir / STUDY_FILE).read_text()
    for name in identifiers:
        assert name not in text
    for folder in served.iterdir():
        assert folder.name.startswith("case-") and not any(i in folder.name for i in identifiers)
        panel = json.loads((folder / "panel.json").read_text())
        assert set(panel) == {"probability", "suspicious", "threshold", "factors", "lesion_types", "type_factors"}
        assert 0 <= panel["probability"] <= 1 and panel["factors"]
        for image in folder.glob("*.nii.gz"):
            header = gzip.decompress(image.read_bytes())[:348]
            assert not any(i.encode() in header for i in identifiers)
            assert header[148:228].strip(b"\0 ") in (b"", b"ITK", b"ITK4", b"ITK-5") or \
                b"ITK" in header[148:228], header[148:228]
        outline = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "outline.nii.gz")))
        assert 0 < outline.sum() < outline.size / 4  # a contour, not a filled region
    labels = key.set_index("case")["label"].astype(int)
    for reader in study.readers:
        sessions = study.sessions[reader.code]
        assert len(sessions) == 2
        for session in sessions:
            arms = pd.Series({i.case: i.arm for i in session})
            # each session: half the cases unaided, half aided, the malignant ones split evenly
            assert abs((arms == "aided").sum() - (arms == "unaided").sum()) <= 1
            aided_malignant = labels[arms[arms == "aided"].index].sum()
            assert abs(aided_malignant - labels[arms[arms == "unaided"].index].sum()) <= 1
    orders = {tuple(i.case for i in study.sessions[r.code][0]) for r in study.readers}
    assert len(orders) == 4  # every reader their own order
    assert {r.group for r in study.readers} == {0, 1}


def test_the_application_lets_only_a_signed_in_reader_read_their_current_case(prepared, tmp_path):
    study, tokens = fresh_copy(prepared, tmp_path)
    anonymous = client_for(study)
    assert anonymous.get("/read").status_code == 401
    assert anonymous.get("/volume/1/1/outline.nii.gz").status_code == 401
    wrong = anonymous.post("/login", data={"code": "R1", "token": "guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    unknown = anonymous.post("/login", data={"code": "R9", "token": tokens["R1"]})
    assert unknown.status_code == 401 and "Unknown reader code" in unknown.text
    for path in ("/private/key.csv", "/cases/x/panel.json", "/study.json", "/answers.sqlite",
                 "/volume/1/1/..%2F..%2Fprivate%2Fkey.csv", "/static/..%2F..%2Fstudy.json"):
        assert anonymous.get(path).status_code in (401, 404), path

    client = client_for(study, "R1", tokens["R1"])
    page = client.get("/read")
    assert page.status_code == 200 and "Case 1 of 24" in page.text
    item = load_study(study).sessions["R1"][0][0]
    assert ("The model&#39;s opinion" in page.text or "The model's opinion" in page.text) == (item.arm == "aided")
    volume = client.get("/volume/1/1/outline.nii.gz")
    assert volume.status_code == 200 and volume.content[:2] == b"\x1f\x8b"
    assert client.get("/volume/1/2/outline.nii.gz").status_code == 403  # not the current reading
    assert client.get("/volume/1/1/key.nii.gz").status_code == 404
    assert client.get("/static/niivue.umd.js").status_code == 200
    # a case file removed while the study runs: a clear answer, not a server error
    (study / "cases" / item.case / "outline.nii.gz").unlink()
    missing = client.get("/volume/1/1/outline.nii.gz")
    assert missing.status_code == 404 and "study coordinator" in missing.text


def test_answers_are_checked_recorded_at_once_and_locked(prepared, tmp_path):
    study, tokens = fresh_copy(prepared, tmp_path)
    client = client_for(study, "R2", tokens["R2"])
    client.get("/read")
    for bad, message in ((answer_form(1, 1, likelihood=101), "outside the scale 0-100"),
                         (answer_form(1, 1, scale5=0), "outside the scale 1-5"),
                         (answer_form(1, 1, lesion_type="tumour"), "not one of"),
                         (answer_form(1, 1, likelihood="high"), "not a whole number")):
        response = client.post("/answer", data=bad)
        assert response.status_code == 400 and message in response.text
    store = AnswerStore(study / "answers.sqlite")
    assert store.answered("R2") == {}
    assert client.post("/answer", data=answer_form(1, 2)).status_code == 409  # not the current case
    assert client.post("/answer", data=answer_form(1, 1), follow_redirects=False).status_code == 303
    assert set(store.answered("R2")) == {(1, 1)}
    assert client.post("/answer", data=answer_form(1, 1), follow_redirects=False).status_code == 303  # a retry
    changed = client.post("/answer", data=answer_form(1, 1, likelihood=10))
    assert changed.status_code == 409 and "cannot be changed" in changed.text
    assert store.answer_of("R2", 1, 1).likelihood == 70 and len(store.readings()) == 1
    assert "Case 2 of 24" in client.get("/read").text
    # a new application on the same folder (a restarted server) continues where the reader stopped
    again = client_for(study, "R2", tokens["R2"])
    assert "Case 2 of 24" in again.get("/read").text


def test_the_second_crossover_session_opens_after_the_washout(prepared, tmp_path):
    study, tokens = fresh_copy(prepared, tmp_path)
    data = json.loads((study / STUDY_FILE).read_text())
    data["washout_days"] = 28
    (study / STUDY_FILE).write_text(json.dumps(data))
    design = load_study(study)
    store = AnswerStore(study / "answers.sqlite")
    for p, item in enumerate(design.sessions["R3"][0], start=1):
        store.record("R3", 1, p, item.case, item.arm, Answer(50, 3, "adenoma", 3))
    now = dt.datetime.now(dt.timezone.utc)
    waiting = client_for(study, "R3", tokens["R3"], clock=lambda: now + dt.timedelta(days=3))
    page = waiting.get("/read")
    assert "Session 2 opens on" in page.text and "28-day washout" in page.text
    assert waiting.get("/volume/2/1/outline.nii.gz").status_code == 403
    later = client_for(study, "R3", tokens["R3"], clock=lambda: now + dt.timedelta(days=29))
    assert "session 2 of 2" in later.get("/read").text


def test_simulated_panel_and_analysis_show_learning_and_write_the_report(prepared, tmp_path):
    study, _ = fresh_copy(prepared, tmp_path)
    result = run_cli("reader-study", "simulate", study, "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "wrote 96 readings" in result.stdout
    out = tmp_path / "report"
    result = run_cli("reader-study", "analyze", study, "--out", out)
    assert result.returncode == 0, result.stderr
    m = json.loads((out / "metrics.json").read_text())
    auc = m["analyses"]["auc"]
    assert set(m["readers"]) == {"R1", "R2", "R3", "R4"} and m["cases"] == 12
    assert min(auc["modality_means"].values()) > 0.7  # readers follow the true risk
    assert set(auc["analyses"]) == {"RRRC", "FRRC", "RRFC"}
    rrrc = auc["analyses"]["RRRC"]
    assert rrrc["differences"][0]["first"] == "aided" and 0 <= rrrc["p"] <= 1 and rrrc["df2"] > 0
    for key in ("sensitivity", "specificity", "auc_5_point", "sensitivity_5_point"):
        assert set(m["analyses"][key]["modality_means"]) == {"aided", "unaided"}
    assert m["changes"]["all"]["cases"] == 48
    assert m["reading_seconds"]["aided"]["median"] > 0
    assert 0 <= m["lesion_type_accuracy"]["unaided"]["overall"] <= 1
    html = (out / "report.html").read_text()
    assert "Do readers do better with the model?" in html and "data:image/png;base64" in html
    ratings = read_ratings_csv(out / "ratings.csv", ["aided", "unaided"])  # the long format other software reads
    assert ratings.values.shape == (2, 4, 12)
    # the same seed on a fresh copy gives the same readings and figures
    again, _ = fresh_copy(prepared, tmp_path / "again")
    run_cli("reader-study", "simulate", again, "--seed", "5")
    out2 = tmp_path / "report2"
    run_cli("reader-study", "analyze", again, "--out", out2)
    assert json.loads((out2 / "metrics.json").read_text())["analyses"] == m["analyses"]


def test_analysis_leaves_out_and_names_an_incomplete_reader(prepared, tmp_path):
    study, _ = fresh_copy(prepared, tmp_path)
    from fusion_model.reader_study.panel import simulate_panel

    simulate_panel(study, ["R1", "R2"], seed=1)
    design = load_study(study)
    store = AnswerStore(study / "answers.sqlite")
    item = design.sessions["R3"][0][0]
    store.record("R3", 1, 1, item.case, item.arm, Answer(40, 2, "cyst", 2))
    result = run_cli("reader-study", "analyze", study, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "R3 (1 readings)" in result.stdout
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["readers"] == ["R1", "R2"] and m["incomplete_readers"] == {"R3": 1}


def test_a_hand_edited_study_is_refused_in_one_line(prepared, tmp_path):
    study, _ = fresh_copy(prepared, tmp_path)
    case = sorted((study / "cases").iterdir())[0]
    shutil.rmtree(case)
    result = run_cli("reader-study", "simulate", study)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{case.name}" in result.stderr and "restore it" in result.stderr
    study2, _ = fresh_copy(prepared, tmp_path / "b")
    data = json.loads((study2 / STUDY_FILE).read_text())
    data["sessions"]["R7"] = data["sessions"]["R1"]
    (study2 / STUDY_FILE).write_text(json.dumps(data))
    result = run_cli("reader-study", "analyze", study2, "--out", tmp_path / "x")
    assert result.returncode == 2 and "reader 'R7', who is not among the readers" in result.stderr
    assert not (tmp_path / "x").exists()
    data["sessions"].pop("R7")
    data["sessions"]["R1"][0] = data["sessions"]["R1"][0][1:]
    (study2 / STUDY_FILE).write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="reader R1 never reads case"):
        load_study(study2)


def test_serve_refuses_a_port_in_use(prepared):
    study, _ = prepared
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("reader-study", "serve", study, "--port", port)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is not free" in result.stderr


def test_prepare_refuses_unusable_readers_and_the_training_cohort(trained_model, tmp_path):
    base = ["reader-study", "prepare", "--model", trained_model["model"], "--out", tmp_path / "s",
            "--cache", trained_model["cache"]]
    result = run_cli(*base, "--cohort", trained_model["test_cohort"], "--readers", "R1,Dr Smith")
    assert result.returncode == 2 and "'Dr Smith' is not a usable reader code" in result.stderr
    result = run_cli(*base, "--cohort", trained_model["train_cohort"], "--readers", "R1,R2")
    assert result.returncode == 2 and "none of it was held out" in result.stderr
    assert not (tmp_path / "s").exists()


def test_ratings_file_analysis_matches_the_library(tmp_path):
    from pathlib import Path

    vandyke = Path(__file__).parent / "data" / "vandyke_ratings.csv"
    result = run_cli("reader-study", "analyze", "--ratings", vandyke, "--out", tmp_path / "vd", "--covariance",
                     "jackknife")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "vd" / "metrics.json").read_text())
    rrrc = m["analyses"]["auc"]["analyses"]["RRRC"]
    assert abs(rrrc["p"] - 0.0517) < 1e-4 and abs(rrrc["df2"] - 15.26) < 0.005
    assert m["threshold"] == 3  # 1-5 ratings: positive from 3
    bad = tmp_path / "bad.csv"
    bad.write_text("reader,modality,case,truth,rating\nA,x,c1,1,3\nA,x,c1,1,4\n")
    result = run_cli("reader-study", "analyze", "--ratings", bad, "--out", tmp_path / "b")
    assert result.returncode == 2 and "line 3" in result.stderr and "twice" in result.stderr
    assert not np.any([(tmp_path / "b").exists()])
