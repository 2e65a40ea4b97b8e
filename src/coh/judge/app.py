"""The voting web app (FastAPI): one page, a small JSON API, a results page.

A person types a name once (and the shared password, when one is set); a signed cookie keeps
it. ``GET /api/next`` gives the comparison to judge: the prompt and two outputs called ``left``
and ``right``; which system is on which side is drawn per (voter, comparison) by the store, and
no system name ever reaches the voting page. ``POST /api/vote`` takes ``left``, ``right``,
``tie`` or ``neither`` and an optional comment; repeating a vote is harmless.

The page sets every model and user text with ``textContent`` (never as HTML), and the Content
Security Policy allows no inline script, so text that looks like markup stays text.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from importlib import resources
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator

from coh.judge.results import pair_results, plot
from coh.judge.store import MAX_COMMENT, JudgeStore, VoteConflict, Voter

COOKIE = "coh_judge"
_STATIC = {"page.js": "text/javascript", "page.css": "text/css", "results.js": "text/javascript"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Login(BaseModel):
    name: str = Field(max_length=256)
    password: str = Field(default="", max_length=1024)


class Ballot(BaseModel):
    # An id from the page, whose JavaScript numbers hold integers exactly up to 2**53 - 1 (SQLite's
    # own limit, 2**63 - 1, lies beyond: a larger number was an OverflowError and a 500).
    comparison: int = Field(ge=1, le=2**53 - 1)
    choice: Literal["left", "right", "tie", "neither"]
    comment: str = Field(default="", max_length=MAX_COMMENT)

    @field_validator("comparison", mode="before")
    @classmethod
    def _json_integer(cls, value: object) -> object:
        """A JSON integer (3 or 3.0, as JSON Schema has it), not true or "3", which pydantic would take."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected an integer")
        return value


# What the routes answer besides 200, for the OpenAPI document (the fuzz tests hold the app to it).
_BAD_BODY = {400: {"description": "the body is not JSON"}, 422: {"description": "a field is missing or invalid"}}
_LOGGED_IN = {401: {"description": "not logged in (or a stale cookie)"}}
_BUSY = {503: {"description": "the votes database is busy; retry after Retry-After seconds"}}


def _printable(value: object) -> str | int:
    """A value as JSON can always carry it: lone surrogates escaped (``\\ud83d``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def validation_errors(errors: list[dict]) -> list[dict]:
    """FastAPI's 422 details without the input echoed back (``input``, ``ctx``): an input of nan,
    1e400 or a lone surrogate cannot be written as JSON, which made the error itself a 500."""
    return [{"type": _printable(e.get("type", "")), "loc": [_printable(x) for x in e.get("loc", ())],
             "msg": _printable(e.get("msg", ""))} for e in errors]


def _static(name: str) -> str:
    return resources.files("coh.judge").joinpath("static", name).read_text(encoding="utf-8")


def _sign(key: bytes, voter_id: int) -> str:
    """The cookie value of a voter: the id and its HMAC."""
    return f"{voter_id}.{hmac.new(key, str(voter_id).encode(), hashlib.sha256).hexdigest()}"


def current_voter(request: Request) -> Voter:
    """The voter whose signed cookie came with the request; 401 without one."""
    store: JudgeStore = request.app.state.store
    raw = request.cookies.get(COOKIE, "")
    vid, _, _ = raw.partition(".")
    well_formed = vid.isascii() and vid.isdigit() and len(vid) < 19  # an SQLite integer
    if well_formed and hmac.compare_digest(_sign(request.app.state.cookie_key, int(vid)), raw):
        found = store.voter_by_id(int(vid))
        if found is not None:
            return found
    raise HTTPException(401, "log in with your name first")


CurrentVoter = Annotated[Voter, Depends(current_voter)]


def create_app(store: JudgeStore, password: str | None = None, max_votes: int | None = None,
               show_results: bool = True, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over ``store``. ``password``: shared by all voters (None: anyone who can reach the
    port may vote). ``max_votes``: stop handing out a comparison once it has that many votes.
    ``show_results``: serve the results page (hide it while a study runs, so voters are not
    swayed). ``allowed_hosts``: accepted ``Host`` headers (guards a loopback server against DNS
    rebinding); None accepts any."""
    app = FastAPI(title="coh judge", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.store = store
    # The cookie key depends on the password, so changing the password logs everyone out.
    app.state.cookie_key = hmac.new(store.secret, b"cookie\x00" + (password or "").encode(), hashlib.sha256).digest()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(_HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # Another writer held the lock past the busy timeout (or the disk is full): the vote was not
        # stored, and the page retries; this is the server's state, not a bug in the request.
        return JSONResponse({"detail": f"the votes database is unavailable ({exc}); try again"}, status_code=503,
                            headers={"Retry-After": "2", **_HEADERS})

    @app.get("/health", responses=_BUSY)
    def health() -> dict:
        store.count_comparisons()  # the database answers
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _static("page.html")

    @app.get("/favicon.ico", status_code=204, response_class=Response)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", response_class=Response, responses={
        200: {"content": {"text/javascript": {}, "text/css": {}}}, 404: {"description": "no such file"}})
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404)
        return Response(_static(name), media_type=_STATIC[name])

    @app.get("/api/config")
    def config() -> dict:
        return {"password_required": bool(password), "results": show_results}

    @app.post("/api/login", responses={**_BAD_BODY, 401: {"description": "wrong password"}, **_BUSY})
    def login(body: Login, response: Response) -> dict:
        if password and not hmac.compare_digest(body.password.encode(), password.encode()):
            raise HTTPException(401, "wrong password")
        try:
            found = store.voter(body.name)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        response.set_cookie(COOKIE, _sign(app.state.cookie_key, found.id), max_age=180 * 86400, httponly=True, samesite="strict")
        return {"name": found.name}

    @app.post("/api/logout")
    def logout(response: Response) -> dict:
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return {}

    @app.get("/api/next", responses={**_LOGGED_IN, **_BUSY})
    def next_comparison(who: CurrentVoter) -> dict:
        c = store.next_comparison(who.id, max_votes)
        shown = None
        if c is not None:
            outputs = {"a": c.output_a, "b": c.output_b}
            left = store.left_side(who.id, c.id)
            shown = {"id": c.id, "prompt": c.prompt, "left": outputs[left],
                     "right": outputs["b" if left == "a" else "a"]}
        return {"name": who.name, "progress": store.progress(who.id, max_votes), "comparison": shown}

    @app.post("/api/vote", responses={**_BAD_BODY, **_LOGGED_IN, 404: {"description": "no such comparison"},
                                      409: {"description": "voted otherwise before; votes are final"}, **_BUSY})
    def vote(ballot: Ballot, who: CurrentVoter) -> dict:
        choice: str = ballot.choice
        if choice in ("left", "right"):
            left = store.left_side(who.id, ballot.comparison)
            choice = left if choice == "left" else ("b" if left == "a" else "a")
        try:
            stored = store.record_vote(who.id, ballot.comparison, choice, ballot.comment)
        except KeyError:
            raise HTTPException(404, f"no comparison {ballot.comparison}") from None
        except VoteConflict as e:
            raise HTTPException(409, str(e)) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return {"stored": stored, "progress": store.progress(who.id, max_votes)}

    if show_results:
        @app.get("/results", response_class=HTMLResponse)
        def results_page() -> str:
            return _static("results.html")

        @app.get("/api/results", responses={**_LOGGED_IN, **_BUSY})
        def results(who: CurrentVoter) -> JSONResponse:
            return JSONResponse({"pairs": [r.to_dict() for r in pair_results(store.votes())]})

        @app.get("/api/results.png", response_class=Response,
                 responses={200: {"content": {"image/png": {}}}, **_LOGGED_IN, **_BUSY})
        def results_png(who: CurrentVoter) -> Response:
            return Response(plot(pair_results(store.votes())), media_type="image/png")

    return app
