"""The HTTP server: one FastAPI app over one engine. This module holds what every route shares
(the API key, the tokenizer thread, submitting to the engine, the length checks) and the open
routes (health probes, the chat page, ``/info``); the routes themselves are in
``coh.serve.openai_api`` (OpenAI's completions, chat and models, and the tokenizer endpoints
lm-evaluation-harness uses) and ``coh.serve.original_api`` (the original EasyLM server's).

Every error answers in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, unknown
routes and wrong methods included: 400 for a malformed or out-of-range request (the message names
the field and what was expected; values are never coerced: ``"4"`` is not a number), for text
that is not Unicode (a lone surrogate) and for fields this server does not implement; 401 for a
missing or wrong API key; 404 for an unknown route or model name; 405 for a wrong method; 413 for
a body over ``--max-body-mb``; 503 with ``Retry-After`` when the queue is full; 500 only when the
model failed on a batch (that batch's requests; the server stays up). See ``coh.serve.errors``.

Tokenization, detokenization and the rendering of large answers run on one worker thread beside
the event loop, so that no request, however large, holds up another's ``/health`` or streaming.
A client that disconnects cancels its request (streaming or not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from coh.generation.decoding import TextDecoder
from coh.generation.engine import Engine, QueueFull
from coh.generation.requests import EventCallback, GenRequest, GenResult, Job
from coh.serve.config import DEFAULT_MAX_BODY_MB
from coh.serve.errors import (
    CLIENT_GONE,
    BodyLimit,
    ServeError,
    add_error_handlers,
    busy,
    openapi,
)
from coh.serve.openai_api import OpenAIRoutes
from coh.serve.original_api import OriginalRoutes
from coh.serve.prompts import Prompter

log = logging.getLogger("coh.serve")

STATIC = Path(__file__).parent / "static"
# The chat page shows model text with textContent only; this policy stops any script that would
# slip in anyway (inline handlers such as onerror never run under it).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")


class Server:
    """Routes over one engine; ``app`` is the FastAPI application. ``max_new_tokens``: the reply
    length when a chat request (or the original's /generate, /greedy-until, /chat) gives none;
    ``max_body_mb`` (> 0): the largest request body."""

    def __init__(self, engine: Engine, prompter: Prompter, model_name: str, api_key: str | None = None,
                 max_new_tokens: int = 512, model_path: str = "", max_body_mb: float = DEFAULT_MAX_BODY_MB):
        self.engine, self.prompter, self.tokenizer = engine, prompter, engine.tokenizer
        self.model_name, self.model_path, self.api_key = model_name, model_path or model_name, api_key
        self.max_new_tokens = max_new_tokens
        self.max_body_bytes = int(max_body_mb * 2**20)
        self.created = int(time.time())
        self.vocab_size = max(len(self.tokenizer), engine.model.get_input_embeddings().num_embeddings)
        # One thread for the tokenizer's work, beside the event loop (as vLLM does): a fast tokenizer
        # releases the GIL while it encodes, and one thread never races another on its state.
        self._tokenizer_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.disconnects = 0
        self.openai = OpenAIRoutes(self)
        self.original = OriginalRoutes(self)
        self.app = self._build()

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):
            self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coh-serve-tokenizer")
            self.engine.start()
            try:
                yield
            finally:
                self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

        app = FastAPI(title="coh serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                      description="OpenAI-compatible completions and chat, lm-eval tokenizer endpoints and the "
                                  "original Chain-of-Hindsight server's endpoints. Errors: "
                                  '{"error": {"message", "type", "param", "code"}}.')
        add_error_handlers(app)
        open_routes = APIRouter()
        open_routes.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        # Browsers ask for /favicon.ico on any page (a JSON route opened in a tab too): the same SVG.
        open_routes.add_api_route("/favicon.ico", self.favicon, methods=["GET"], include_in_schema=False)
        open_routes.add_api_route("/health", self.health, methods=["GET"])
        open_routes.add_api_route("/ready", self.ready, methods=["GET"])
        app.include_router(open_routes)
        guarded = APIRouter(dependencies=[Depends(self.check_key)])
        self.openai.add_tokenizer_routes(guarded)
        guarded.add_api_route("/info", self.info, methods=["GET"])
        self.openai.add_routes(guarded)
        self.original.add_routes(guarded)
        app.include_router(guarded)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        app.add_middleware(BodyLimit, limit=self.max_body_bytes)
        app.openapi = functools.partial(openapi, app)
        return app

    # -- what the routes share -----------------------------------------------------------------------
    async def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             error_type="authentication_error")

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in (self.model_name, self.model_path):
            raise ServeError(404, f"the model '{name}' does not exist here; this server serves '{self.model_name}'",
                             "model", "not_found_error")

    async def off_loop(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the tokenizer thread (its exceptions come back here)."""
        if self._tokenizer_thread is None:  # the app runs without its lifespan (an embedding ASGI host)
            self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coh-serve-tokenizer")
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, functools.partial(fn, *args))

    def submit(self, requests: Sequence[GenRequest], on_event: EventCallback | None = None) -> Job:
        most = self.engine.config.queue_size * self.engine.config.max_batch_size
        if len(requests) > most:  # a full queue of full batches: more in one request would crowd out the rest
            raise ServeError(400, f"this request asks for {len(requests)} outputs (prompts x n, or windows of a "
                             f"long text); this server takes at most {most} per request: send fewer at a time",
                             "prompt")
        try:
            return self.engine.submit(requests, on_event)
        except QueueFull as e:
            raise busy(e) from None

    async def run(self, requests: Sequence[GenRequest], request: Request) -> list[GenResult]:
        """The requests' results; the job is cancelled when the client disconnects first."""
        job = self.submit(requests)
        result = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            gone.cancel()
        if not result.done():
            job.cancel()
            self.disconnects += 1
            log.info("%s %s: the client disconnected; its request was cancelled", request.method, request.url.path)
            raise ServeError(CLIENT_GONE, "the client disconnected; the request was cancelled",
                             error_type="client_gone")
        try:
            return result.result()
        except Exception as e:
            raise ServeError(500, f"the model failed on this batch: {type(e).__name__}: {e}",
                             error_type="server_error") from e

    def check_length(self, ids: Sequence[int], max_new: int, param: str = "max_tokens") -> None:
        limit = self.engine.max_model_len
        if len(ids) > limit:
            raise ServeError(400, f"the prompt is {len(ids)} tokens long, more than the model's context of {limit}",
                             "prompt")
        if len(ids) + max_new > limit:
            raise ServeError(400, f"the prompt ({len(ids)} tokens) plus {param} ({max_new}) exceed the model's "
                             f"context of {limit} tokens; ask for at most {limit - len(ids)}", param)

    @functools.cached_property
    def _longest_token_chars(self) -> int:
        return max((len(t) for t in self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
                    if isinstance(t, str)), default=1)

    def check_chars(self, text: str, param: str) -> None:
        """Refuse a text too long for the context whatever it tokenizes to, before tokenizing it."""
        # Every token covers at most _longest_token_chars characters (a byte-level token's string is
        # at least as long as its text), so a longer text cannot fit however it tokenizes; twice that
        # leaves room for a normalizer that composes characters (NFKC).
        limit = 2 * self.engine.max_model_len * max(self._longest_token_chars, 1)
        if len(text) > limit:
            raise ServeError(400, f"the {param} is {len(text):,} characters long: more than the model's context "
                             f"of {self.engine.max_model_len} tokens can hold", param)

    def check_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ServeError(400, f"token id {bad[0]} is outside the vocabulary (0 to {self.vocab_size - 1})", param)

    @functools.cached_property
    def token_text(self) -> Callable[[int], str]:
        """A token id's text, special tokens included (cached: answers name the same tokens often)."""
        @functools.lru_cache(maxsize=200_000)
        def text(token_id: int) -> str:
            return self.tokenizer.decode([token_id], skip_special_tokens=False)

        return text

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The text each token of ``ids`` adds, decoded in order."""
        decoder = TextDecoder(self.tokenizer)
        return [decoder.step(i) for i in ids]

    # -- open routes ---------------------------------------------------------------------------------
    async def page(self):
        return FileResponse(STATIC / "page.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    async def favicon(self):
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def health(self):
        return {"status": "ok", "queued": self.engine.queued(), "running": self.engine.running(),
                "disconnects": self.disconnects, **self.engine.stats}

    async def ready(self):
        return "Ready!\n"  # the original server's answer

    async def info(self):
        return {"model": self.model_name, "max_model_len": self.engine.max_model_len,
                "max_tokens": self.max_new_tokens, "auth": self.api_key is not None, **self.prompter.describe()}


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (after the body, ASGI's next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # a server that answers with more (empty) body parts: don't spin
