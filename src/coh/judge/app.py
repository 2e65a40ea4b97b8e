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
from importlib import resources
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from coh.judge.stats import pair_results, plot
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
    comparison: int
    choice: Literal["left", "right", "tie", "neither"]
    comment: str = Field(default="", max_length=MAX_COMMENT)


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

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _static("page.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404)
        return Response(_static(name), media_type=_STATIC[name])

    @app.get("/api/config")
    def config() -> dict:
        return {"password_required": bool(password), "results": show_results}

    @app.post("/api/login")
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

    @app.get("/api/next")
    def next_comparison(who: CurrentVoter) -> dict:
        c = store.next_comparison(who.id, max_votes)
        shown = None
        if c is not None:
            outputs = {"a": c.output_a, "b": c.output_b}
            left = store.left_side(who.id, c.id)
            shown = {"id": c.id, "prompt": c.prompt, "left": outputs[left],
                     "right": outputs["b" if left == "a" else "a"]}
        return {"name": who.name, "progress": store.progress(who.id, max_votes), "comparison": shown}

    @app.post("/api/vote")
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

        @app.get("/api/results")
        def results(who: CurrentVoter) -> JSONResponse:
            return JSONResponse({"pairs": [r.to_dict() for r in pair_results(store.votes())]})

        @app.get("/api/results.png")
        def results_png(who: CurrentVoter) -> Response:
            return Response(plot(pair_results(store.votes())), media_type="image/png")

    return app
