"""`fusion-model reader-study serve`: the reading application (FastAPI, pages rendered on the server).

A reader signs in with their code and secret token (a cookie keeps the token for the session; nothing is shown
to anyone without one) and gets their next reading: the case's phases in the NiiVue viewer (scroll, window/level,
outline on/off), in the aided arm the model's panel, and the answer form (malignancy likelihood 0-100, a
5-point score, the most likely lesion type and the confidence in it). Each answer is written to SQLite before
the next case is shown. Only the files of the reader's current (or already answered) reading are served; the
study's private/ folder never is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.middleware.gzip import GZipMiddleware

from fusion_model import __version__
from fusion_model.reader_study.design import ANSWERS_FILE, Study, load_study, token_digest
from fusion_model.reader_study.reading import reader_position
from fusion_model.reader_study.store import Answer, AnswerError, AnswerStore

COOKIE = "fm_reader_token"
STATIC = Path(__file__).resolve().parents[1] / "report" / "static"
STATIC_FILES = {"niivue.umd.js": STATIC / "niivue" / "niivue.umd.js", "viewer.js": STATIC / "viewer.js",
                "NIIVUE-LICENSE.txt": STATIC / "niivue" / "LICENSE"}
VOLUME_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
SCALE5 = {1: "definitely benign", 2: "probably benign", 3: "indeterminate", 4: "probably malignant",
          5: "definitely malignant"}

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("fusion_model.reader_study", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _page(template: str, status: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(template).render(version=__version__, **context), status_code=status)


def _message(title: str, text: str, status: int = 200, link: tuple[str, str] | None = None) -> HTMLResponse:
    return _page("message.html.j2", status, title=title, text=text, link=link)


def _study_changed() -> HTMLResponse:
    return _message("Case not available", "This case's files are missing or damaged in the study folder; your "
                    "answers so far are saved. Please tell the study coordinator.", 500, ("/read", "Try again"))


def create_app(study_dir: Path, clock=None) -> FastAPI:
    """The reading application for a study folder (checked when the app is made)."""
    study_dir = Path(study_dir)
    study: Study = load_study(study_dir)
    store = AnswerStore(study_dir / ANSWERS_FILE)
    readers_by_digest = {r.token_sha256: r.code for r in study.readers}
    now = clock or (lambda: dt.datetime.now(dt.timezone.utc))
    app = FastAPI(title="fusion-model reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GZipMiddleware, minimum_size=2048)

    def current_reader(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        return readers_by_digest.get(token_digest(token)) if token else None

    def signed_out() -> Response:
        return _message("Please sign in", "Your reading session has ended or you are not signed in.", 401,
                        ("/", "Sign in"))

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        if current_reader(request):
            return RedirectResponse("/read", status_code=303)
        return _page("login.html.j2", study=study.name, error=None)

    @app.post("/login")
    async def login(request: Request):
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        code, token = form.get("code", "").strip(), form.get("token", "").strip()
        reader = study.reader(code)
        if reader is None or token_digest(token) != reader.token_sha256:
            return _page("login.html.j2", 401, study=study.name,
                         error="Unknown reader code or wrong token. Use the code and token the study coordinator "
                               "gave you.")
        response = RedirectResponse("/read", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.get("/logout")
    def logout():
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/read", response_class=HTMLResponse)
    def read(request: Request):
        reader = current_reader(request)
        if reader is None:
            return signed_out()
        position = reader_position(study, store, reader, now())
        if position.kind == "done":
            return _message("Thank you", f"You have read all {position.total} cases of this study. Your answers "
                            "are saved; you can close this window.", link=("/logout", "Sign out"))
        if position.kind == "washout":
            return _message("Session complete", f"Session {position.session - 1} is complete. Session "
                            f"{position.session} opens on {position.opens:%Y-%m-%d %H:%M} UTC, after the "
                            f"{study.washout_days}-day washout.", link=("/logout", "Sign out"))
        item = position.item
        case = study.case(item.case)
        store.mark_shown(reader, position.session, position.position, item.case, item.arm)
        base = f"/volume/{position.session}/{position.position}"
        spec = {"phases": [{"name": p, "url": f"{base}/{p}.nii.gz"} for p in case.phases],
                "outline": {"name": "outline", "url": f"{base}/outline.nii.gz"}}
        panel = None
        if item.arm == "aided":
            try:
                panel = json.loads((study_dir / "cases" / case.code / "panel.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return _study_changed()
        return _page("read.html.j2", study=study.name, reader=reader, position=position, item=item,
                     spec=json.dumps(spec), panel=panel, lesion_types=study.lesion_types, scale5=SCALE5,
                     locked=study.answers_locked)

    @app.get("/volume/{session}/{position}/{name}.nii.gz")
    def volume(request: Request, session: int, position: int, name: str):
        reader = current_reader(request)
        if reader is None:
            return PlainTextResponse("sign in first", status_code=401)
        items = study.sessions[reader]
        if not (1 <= session <= len(items) and 1 <= position <= len(items[session - 1])):
            return PlainTextResponse("no such reading", status_code=404)
        item = items[session - 1][position - 1]
        current = reader_position(study, store, reader, now())
        if (current.kind != "case" or (current.session, current.position) != (session, position)) and \
                store.answer_of(reader, session, position) is None:
            return PlainTextResponse("not your current reading", status_code=403)
        case = study.case(item.case)
        if not VOLUME_NAME.match(name) or (name != "outline" and name not in case.phases):
            return PlainTextResponse("no such image", status_code=404)
        path = study_dir / "cases" / case.code / f"{name}.nii.gz"
        if not path.is_file():
            return PlainTextResponse("this image is missing from the study folder; tell the study coordinator",
                                     status_code=404)
        return FileResponse(path, media_type="application/gzip", headers={"Cache-Control": "private, no-store"})

    @app.post("/answer")
    async def answer(request: Request):
        reader = current_reader(request)
        if reader is None:
            return signed_out()
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        try:
            session, position = int(form.get("session", "")), int(form.get("position", ""))
        except ValueError:
            return _message("Answer not recorded", "The form was incomplete; go back to the case.", 400,
                            ("/read", "Back to the case"))
        items = study.sessions[reader]
        if not (1 <= session <= len(items) and 1 <= position <= len(items[session - 1])):
            return _message("Answer not recorded", "This reading is not part of your study.", 400,
                            ("/read", "Back to your next case"))
        item = items[session - 1][position - 1]
        current = reader_position(study, store, reader, now())
        is_current = current.kind == "case" and (current.session, current.position) == (session, position)
        recorded = store.answer_of(reader, session, position)
        if not is_current and recorded is None:
            return _message("Answer not recorded", "This is not the case you are reading now.", 409,
                            ("/read", "Back to your next case"))
        try:
            parsed = Answer.parse(form, study.lesion_types)
            store.record(reader, session, position, item.case, item.arm, parsed, locked=study.answers_locked)
        except AnswerError as err:
            status = 409 if "cannot be changed" in str(err) else 400
            return _message("Answer not recorded", f"{err}. Nothing was saved for this case; your earlier answers "
                            "are kept.", status, ("/read", "Back to the case"))
        return RedirectResponse("/read", status_code=303)

    @app.get("/static/{name}")
    def static(name: str):
        path = STATIC_FILES.get(name)
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        media = "text/javascript" if name.endswith(".js") else "text/plain"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=86400"})

    return app
