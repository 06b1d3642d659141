"""`fusion-model reader-study`: prepare a blinded reading study, serve it in the browser, simulate a reader
panel, and analyse the readings (multi-reader multi-case)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fusion_model.console import CacheOption, console, labelled
from fusion_model.errors import UserInputError

app = typer.Typer(help="Reader study: do radiologists do better with the model? (prepare, serve, simulate, analyze)",
                  no_args_is_help=True)


def _codes(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


@app.command()
def prepare(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (from train)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="labelled cohort; default cases: what the model did not "
                                                          "train on")],
    out: Annotated[Path, typer.Option("--out", help="study folder to write")],
    readers: Annotated[str, typer.Option("--readers", help="reader codes, comma-separated, e.g. R1,R2,R3")],
    design: Annotated[str, typer.Option("--design", help="crossover (two sessions, washout between) or sequential "
                                                         "(unaided then aided on the same case)")] = "crossover",
    cases: Annotated[int | None, typer.Option("--cases", help="number of cases, stratified by label "
                                                              "(default: all held-out lesions)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the case choice, codes and reading orders")] = 0,
    washout_days: Annotated[int, typer.Option("--washout-days", help="days between the crossover sessions")] = 28,
    allow_changes: Annotated[bool, typer.Option("--allow-changes", help="let readers revise a saved answer "
                                                                        "(default: locked once saved)")] = False,
    crop_mm: Annotated[float, typer.Option("--crop-mm", help="width of the field of view around the lesion")] = 100.0,
    all_lesions: Annotated[bool, typer.Option("--all-lesions", help="on the training cohort: read every lesion, "
                                                                    "including those the model learnt from")] = False,
    cache: CacheOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing study folder")] = False,
) -> None:
    """Pick the cases and write a blinded study folder: images, the model panel, each reader's order."""
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.reader_study.prepare import prepare_study

    if washout_days < 0:
        raise UserInputError(f"--washout-days {washout_days}: give 0 or more days")
    result = prepare_study(model, cohort, out, _codes(readers), ImageCache.at(cache), design=design, cases=cases,
                           seed=seed, washout_days=washout_days, answers_locked=not allow_changes, crop_mm=crop_mm,
                           all_lesions=all_lesions, overwrite=overwrite)
    console.print(f"{result.cases} cases ({result.malignant} malignant) from {result.source}; {design} design")
    table = Table(title="hand each reader their code and token (also in private/reader_tokens.csv)")
    table.add_column("reader")
    table.add_column("token")
    for reader, token in result.tokens.items():
        table.add_row(reader, token)
    console.print(table)
    console.print(f"wrote {out} (the key is in {out / 'private'}; keep that folder from the readers)")


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart may follow a kill
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserInputError(f"port {port} on {host} is not free ({err.strerror}); choose another with "
                                 "--port") from None


@app.command()
def serve(
    study: Annotated[Path, typer.Argument(help="study folder (from reader-study prepare)")],
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option("--host", help="address to listen on; the default is this machine only. "
                                                     "Use 0.0.0.0 only on a network you trust")] = "127.0.0.1",
) -> None:
    """The reading application in the browser: sign in with a reader code and token, read, answer."""
    import uvicorn

    from fusion_model.reader_study.app import create_app

    if not 1 <= port <= 65535:
        raise UserInputError(f"--port {port}: give a port between 1 and 65535")
    app_ = create_app(study)
    _check_port(host, port)
    console.print(f"reading application for {study} on http://{host}:{port}/ (Ctrl+C stops it; answers are saved "
                  "as they are given)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def simulate(
    study: Annotated[Path, typer.Argument(help="study folder prepared from a synthetic cohort")],
    readers: Annotated[str | None, typer.Option("--readers", help="reader codes to simulate, comma-separated "
                                                                  "(default: every reader of the study)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the simulated readers")] = 0,
) -> None:
    """A simulated reader panel answers the study (readers follow the lesions' true risk, and the model when
    aided), so the chain runs without humans."""
    from fusion_model.reader_study.panel import simulate_panel

    result = simulate_panel(study, _codes(readers) if readers else None, seed)
    table = Table(title="simulated readers")
    for column in ("reader", "slope", "sigma", "trust in the model"):
        table.add_column(column)
    for r in result["readers"]:
        table.add_row(r["code"], f"{r['slope']:.2f}", f"{r['sigma']:.2f}", f"{r['trust']:.2f}")
    console.print(table)
    console.print(f"wrote {result['readings_written']} readings to {study / 'answers.sqlite'}")


@app.command()
def analyze(
    study: Annotated[Path | None, typer.Argument(help="study folder (omit with --ratings)")] = None,
    out: Annotated[Path, typer.Option("--out", help="report folder")] = Path("reports/reader-study"),
    ratings: Annotated[Path | None, typer.Option(
        "--ratings", help="analyse a ratings CSV in the long format (reader, modality, case, truth, rating) "
                          "instead")] = None,
    covariance: Annotated[str, typer.Option("--covariance", help="delong or jackknife")] = "delong",
    positive_at: Annotated[float | None, typer.Option(
        "--positive-at", help="rating from which a reading counts as positive (default 50; 3 for 1-5 "
                              "ratings)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing report folder")] = False,
) -> None:
    """Multi-reader multi-case analysis (Obuchowski-Rockette-Hillis): AUC, sensitivity, specificity with and
    without the model, per reader, and how the readers changed their minds."""
    from fusion_model.reader_study.analysis import analyze_study

    if (study is None) == (ratings is None):
        raise UserInputError("give a study folder or --ratings FILE.csv (one of the two)")
    if covariance not in ("delong", "jackknife"):
        raise UserInputError(f"--covariance {covariance!r}: use delong or jackknife")
    m = analyze_study(study, out, ratings, covariance, positive_at, overwrite)
    a = m["analyses"]["auc"]
    mods = m["modalities"]
    table = Table(title=f"{len(m['readers'])} readers, {m['cases']} cases ({m['positives']} positive)")
    for column in ("analysis", f"AUC {mods[0]}", f"AUC {mods[1]}", "difference (95% CI)", "p"):
        table.add_column(column)
    for key in ("RRRC", "FRRC", "RRFC"):
        an = a["analyses"].get(key)
        if not an:
            continue
        d = an["differences"][0]
        table.add_row(an["title"], f"{a['modality_means'][mods[0]]:.3f}", f"{a['modality_means'][mods[1]]:.3f}",
                      f"{d['estimate']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})", f"{d['p']:.4f}")
    console.print(table)
    if m.get("incomplete_readers"):
        labelled("left out (not every case read in both arms)", "yellow", ": " + ", ".join(
            f"{r} ({n} readings)" for r, n in m["incomplete_readers"].items()))
    console.print(f"wrote {out / 'report.html'}")
