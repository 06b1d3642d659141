"""`fusion-model explain`: case cards, the case review page and global SHAP figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusion_model.console import CacheOption, console, labelled


app = typer.Typer()


@app.command()
def explain(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (from train)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory; labels not needed")],
    out: Annotated[Path, typer.Option("--out", help="folder for the case review page and case cards")],
    lesion: Annotated[list[str] | None, typer.Option("--lesion", help="explain only this lesion id "
                                                                          "(repeat for several)")] = None,
    variant: Annotated[str | None, typer.Option(help="model variant to explain (default: the primary)")] = None,
    centre: Annotated[str | None, typer.Option("--centre", help="explain only this centre's lesions")] = None,
    cache: CacheOption = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output folder")] = False,
) -> None:
    """Why the model says what it says: SHAP factors, CT saliency, case cards and a case review page."""
    from fusion_model.prechecks import check_scoring_inputs

    check_scoring_inputs(model, cohort, out, overwrite, centre=centre)  # answered before the network libraries load
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.explain.run import explain_cohort

    result = explain_cohort(model, cohort, out, ImageCache.at(cache), lesion_ids=lesion or None, variant=variant,
                            strict=strict, overwrite=overwrite, centre=centre)
    for error in result.errors:
        labelled("not explained", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    t = result.timings
    console.print(f"explained {len(result.lesion_ids)} lesions: read {t['read_seconds']:.1f} s, SHAP "
                  f"{t['shap_seconds']:.2f} s, saliency {t['saliency_seconds']:.1f} s, case cards "
                  f"{t['render_seconds']:.1f} s")
    console.print(f"case review page: {result.out / 'index.html'} (case cards in {result.out / 'cases'})")
