"""HTTP routes: OpenAI's completions and chat completions (with streaming), tokenizer endpoints
for lm-evaluation-harness, the original EasyLM server's endpoints, health probes and the chat page.

Every error answers in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, unknown
routes and wrong methods included: 400 for a malformed or out-of-range request (the message names
the field and what was expected; values are never coerced: ``"4"`` is not a number), for text
that is not Unicode (a lone surrogate) and for fields this server does not implement; 401 for a
missing or wrong API key; 404 for an unknown route or model name; 405 for a wrong method; 413 for
a body over ``--max-body-mb``; 503 with ``Retry-After`` when the queue is full; 500 only when the
model failed on a batch (that batch's requests; the server stays up).

Tokenization, detokenization and the rendering of large answers run on one worker thread beside
the event loop, so that no request, however large, holds up another's ``/health`` or streaming.
A client that disconnects cancels its request (streaming or not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coh.data.feedback import Turn
from coh.data.records import Segment, separator
from coh.generation.engine import Delta, Engine, QueueFull, Row, RowResult, TextDecoder, TokenLogprob
from coh.serve.prompts import Prompter

log = logging.getLogger("coh.serve")

STATIC = Path(__file__).parent / "static"
MAX_LOGPROBS = 20
MAX_N = 128
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # each stop string is matched against the text after every token
DEFAULT_MAX_BODY_MB = 8.0  # holds lm-eval batches of 128 prompts of 8k token ids
RETRY_AFTER_S = 1
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the logs do
INT64 = 2**63
# OpenAI reports a token with no probability at all as -9999 (JSON has no -Infinity).
NO_PROBABILITY = -9999.0
# Fields of OpenAI's API that change nothing in the output here, accepted and ignored.
NO_EFFECT = ("user",)
# The chat page shows model text with textContent only; this policy stops any script that would
# slip in anyway (inline handlers such as onerror never run under it).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")


class ServeError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 503: "server_busy"}


def _error(status: int, message: str, param: str | None = None, kind: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    kind = kind or KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status,
                        headers=headers)


# -- request bodies ----------------------------------------------------------------------------------
# What an unknown field may hold: nothing (null, false, empty). Anything else is refused by name.
NOTHING = (None, False, "", [], {})


class _Body(BaseModel):
    # strict: "4" is not a number, 1 is not true. Unknown fields are kept so that the route can name
    # them in its refusal (see _refuse_unknown); the schema says what is accepted.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False,
                              json_schema_extra={"additionalProperties": {"enum": list(NOTHING)}})


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(data: Any) -> str | None:
    """The path (``messages[0].content``) of the first string holding a lone surrogate, or None.
    Iterative: a body may nest as deep as the JSON parser allows."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"{path}.{key!a}" if path else ascii(key)
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{k}]", item) for k, item in reversed(list(enumerate(value))))
    return None


class _Request(_Body):
    """A whole request body: its text must be Unicode. JSON allows ``"\\ud83d"`` alone, which
    is no character; tokenizers and the answer's own UTF-8 encoding fail on it."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        where = _lone_surrogate(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate", "field '{field}' holds a lone UTF-16 surrogate (such as \\ud83d), which is not "
                "a character: send whole characters (a surrogate pair, or the character itself)", {"field": where})
        return data


NonNegative = Annotated[int, Field(ge=0)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)]


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Request):
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extra; 0 or -1: off
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)  # a 64-bit integer, as OpenAI and vLLM take it
    feedback: str | None = None  # good, bad, none, or a literal phrase (see coh.serve.prompts)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # OpenAI's end-user id: changes nothing here


class CompletionRequest(_Sampling):
    prompt: str | list[NonNegative] | list[str] | list[list[NonNegative]]
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    add_special_tokens: bool = True  # vLLM's extra: for string prompts only; token ids are never changed
    return_tokens_as_token_ids: bool = False  # vLLM's extra: "token_id:N" instead of token text


class ContentPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    feedback: str | None = None
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[NonNegative]


class LegacyRequest(_Request):
    """The original server's body (EasyLM ``InferenceRequest``)."""

    prefix_text: list[str] | None = None
    text: list[str] | None = None
    until: list[StopString] | list[list[StopString]] | None = None
    temperature: float | None = Field(None, ge=0, le=100)


class LegacyChatRequest(_Request):
    prompt: str
    context: str = ""
    temperature: float | None = Field(None, ge=0, le=100)
    feedback: str | None = None


def _refuse_unknown(model: BaseModel, path: str = "") -> None:
    """400 naming the first field the server does not implement. A field set to nothing (null,
    false, empty) asks for nothing and passes, so that clients echoing defaults still work."""
    for name, value in (model.model_extra or {}).items():
        if any(value == nothing and type(value) is type(nothing) for nothing in NOTHING):
            continue
        raise ServeError(400, f"'{path}{name}' is not supported by this server: leave it out (it would be "
                         "ignored otherwise)", f"{path}{name}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _refuse_unknown(value, f"{path}{name}.")
        elif isinstance(value, list):
            for k, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _refuse_unknown(item, f"{path}{name}[{k}].")


@dataclass
class _Plan:
    """A request turned into engine rows (tokenized, validated), with what the answer needs."""

    rows: list[Row]
    prompt_tokens: int
    echo: list[str] | None = None  # completions: the prompt text each choice starts with


# -- the app -------------------------------------------------------------------------------------------
class Server:
    """Routes over one engine; ``app`` is the FastAPI application."""

    def __init__(self, engine: Engine, prompter: Prompter, model_name: str, api_key: str | None = None,
                 max_tokens: int = 512, model_path: str = "", max_body_mb: float = DEFAULT_MAX_BODY_MB):
        if not max_body_mb > 0:
            raise ValueError(f"--max-body-mb must be positive, got {max_body_mb}")
        self.engine, self.prompter, self.tokenizer = engine, prompter, engine.tokenizer
        self.model_name, self.model_path, self.api_key = model_name, model_path or model_name, api_key
        self.max_tokens = max_tokens
        self.max_body_bytes = int(max_body_mb * 2**20)
        self.created = int(time.time())
        self.vocab_size = max(len(self.tokenizer), engine.model.get_input_embeddings().num_embeddings)
        # One thread for the tokenizer's work, beside the event loop (as vLLM does): a fast tokenizer
        # releases the GIL while it encodes, and one thread never races another on its state.
        self._tokenizer_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.disconnects = 0
        self.app = self._build()

    # -- plumbing ------------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        from contextlib import asynccontextmanager

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

        @app.exception_handler(ServeError)
        async def serve_error(request: Request, e: ServeError):
            return _error(e.status, e.message, e.param, e.kind, e.headers)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, e: RequestValidationError):
            message, param = _describe_validation(e.errors())
            return _error(400, message, param)

        @app.exception_handler(QueueFull)
        async def busy(request: Request, e: QueueFull):
            return _error(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)})

        @app.exception_handler(ValueError)
        async def bad_value(request: Request, e: ValueError):
            return _error(400, str(e))

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, e: StarletteHTTPException):
            return _error(e.status_code, _http_message(request, e), headers=e.headers)

        @app.exception_handler(Exception)
        async def crash(request: Request, e: Exception):  # a bug: say so in the API's shape (uvicorn logs the trace)
            return _error(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")

        open_routes = APIRouter()
        open_routes.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        open_routes.add_api_route("/health", self.health, methods=["GET"])
        open_routes.add_api_route("/ready", self.ready, methods=["GET"])
        app.include_router(open_routes)
        guarded = APIRouter(dependencies=[Depends(self.check_key)])
        for prefix in ("", "/v1"):
            guarded.add_api_route(f"{prefix}/tokenizer_info", self.tokenizer_info, methods=["GET"])
            guarded.add_api_route(f"{prefix}/tokenize", self.tokenize, methods=["POST"])
            guarded.add_api_route(f"{prefix}/detokenize", self.detokenize, methods=["POST"])
        guarded.add_api_route("/info", self.info, methods=["GET"])
        guarded.add_api_route("/v1/models", self.models, methods=["GET"])
        guarded.add_api_route("/v1/completions", self.completions, methods=["POST"])
        guarded.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        guarded.add_api_route("/loglikelihood", self.loglikelihood, methods=["POST"])
        guarded.add_api_route("/loglikelihood-rolling", self.loglikelihood_rolling, methods=["POST"])
        guarded.add_api_route("/generate", self.generate, methods=["POST"])
        guarded.add_api_route("/greedy-until", self.greedy_until, methods=["POST"])
        guarded.add_api_route("/chat", self.legacy_chat, methods=["POST"])
        app.include_router(guarded)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        app.add_middleware(_BodyLimit, limit=self.max_body_bytes)
        app.openapi = functools.partial(_openapi, app)
        return app

    async def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             kind="authentication_error")

    def _check_model(self, name: str | None) -> None:
        if name is not None and name not in (self.model_name, self.model_path):
            raise ServeError(404, f"the model '{name}' does not exist here; this server serves '{self.model_name}'",
                             "model", "not_found_error")

    async def _off_loop(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the tokenizer thread (its exceptions come back here)."""
        if self._tokenizer_thread is None:  # the app runs without its lifespan (an embedding ASGI host)
            self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coh-serve-tokenizer")
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, functools.partial(fn, *args))

    def _submit(self, rows: Sequence[Row], on_event=None):
        most = self.engine.config.queue_size * self.engine.config.max_batch_size
        if len(rows) > most:  # a full queue of full batches: more in one request would crowd out the rest
            raise ServeError(400, f"this request asks for {len(rows)} outputs (prompts x n, or windows of a long "
                             f"text); this server takes at most {most} per request: send fewer at a time", "prompt")
        try:
            return self.engine.submit(rows, on_event)
        except QueueFull as e:
            raise ServeError(503, str(e), kind="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def _run(self, rows: Sequence[Row], request: Request) -> list[RowResult]:
        """The rows' results; the job is cancelled when the client disconnects first."""
        job = self._submit(rows)
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
            raise ServeError(CLIENT_GONE, "the client disconnected; the request was cancelled", kind="client_gone")
        try:
            return result.result()
        except Exception as e:
            raise ServeError(500, f"the model failed on this batch: {type(e).__name__}: {e}", kind="server_error") from e

    def _check_length(self, ids: Sequence[int], max_new: int, param: str = "max_tokens") -> None:
        limit = self.engine.max_model_len
        if len(ids) > limit:
            raise ServeError(400, f"the prompt is {len(ids)} tokens long, more than the model's context of {limit}",
                             "prompt")
        if len(ids) + max_new > limit:
            raise ServeError(400, f"the prompt ({len(ids)} tokens) plus {param} ({max_new}) exceed the model's "
                             f"context of {limit} tokens; ask for at most {limit - len(ids)}", param)

    @functools.cached_property
    def _token_text(self):
        @functools.lru_cache(maxsize=200_000)
        def text(token_id: int) -> str:
            return self.tokenizer.decode([token_id], skip_special_tokens=False)

        return text

    def _pieces(self, ids: Sequence[int]) -> list[str]:
        decoder = TextDecoder(self.tokenizer)
        return [decoder.step(i) for i in ids]

    # -- open routes ---------------------------------------------------------------------------------
    async def page(self):
        return FileResponse(STATIC / "page.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    async def health(self):
        return {"status": "ok", "queued": self.engine.queued(), "running": self.engine.running(),
                "disconnects": self.disconnects, **self.engine.stats}

    async def ready(self):
        return "Ready!\n"  # the original's answer

    # -- information -----------------------------------------------------------------------------------
    async def info(self):
        return {"model": self.model_name, "max_model_len": self.engine.max_model_len,
                "max_tokens": self.max_tokens, "auth": self.api_key is not None, **self.prompter.describe()}

    async def models(self):
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "coh", "root": self.model_path,
                                            "max_model_len": self.engine.max_model_len}]}

    async def tokenizer_info(self):
        tok = self.tokenizer
        template = tok.chat_template if self.prompter.format == "chat-template" else None
        return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "chat_template": template, "model_max_length": self.engine.max_model_len,
                "tokenizer_class": type(tok).__name__}

    async def tokenize(self, req: TokenizeRequest):
        _refuse_unknown(req)
        self._check_model(req.model)
        return await self._off_loop(self._tokenize, req)

    def _tokenize(self, req: TokenizeRequest) -> JSONResponse:
        if (req.prompt is None) == (req.messages is None):
            raise ServeError(400, "give exactly one of 'prompt' (text) or 'messages' (chat)", "prompt")
        if req.messages is not None:
            ids = self.prompter.chat_ids(_turns(req.messages), req.feedback)
        else:
            ids = self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        out: dict[str, Any] = {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_model_len}
        if req.return_token_strs:
            out["token_strs"] = self.tokenizer.convert_ids_to_tokens(ids)
        return JSONResponse(out)

    async def detokenize(self, req: DetokenizeRequest):
        _refuse_unknown(req)
        self._check_model(req.model)
        self._check_ids(req.tokens, "tokens")
        return await self._off_loop(
            lambda: JSONResponse({"prompt": self.tokenizer.decode(req.tokens, skip_special_tokens=False)}))

    def _check_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ServeError(400, f"token id {bad[0]} is outside the vocabulary (0 to {self.vocab_size - 1})", param)

    # -- OpenAI ---------------------------------------------------------------------------------------------
    def _sampling(self, req: _Sampling) -> dict:
        """Validated sampling settings shared by both OpenAI routes (ranges are in the models)."""
        _refuse_unknown(req)
        self._check_model(req.model)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise ServeError(400, f"{name} is not supported by this server (give 0 or leave it out)", name)
        if req.logit_bias:
            raise ServeError(400, "logit_bias is not supported by this server", "logit_bias")
        if req.stream_options is not None and not req.stream:
            raise ServeError(400, "stream_options needs stream=true", "stream_options")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return {"temperature": 1.0 if req.temperature is None else req.temperature,
                "top_p": 1.0 if req.top_p is None else req.top_p,
                "top_k": 0 if req.top_k in (None, -1) else req.top_k, "seed": req.seed, "stop": tuple(stop)}

    def _completion_prompts(self, req: CompletionRequest) -> list[tuple[list[int], str | None]]:
        """(ids, prompt text to echo or None to decode) per prompt."""
        p = req.prompt
        if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
            texts = [p] if isinstance(p, str) else p
            if req.feedback not in (None, "none"):
                # The prompt is the user's message, put in the prompt format the model was trained with.
                return [(self.prompter.chat_ids([Turn("user", t)], req.feedback), None) for t in texts]
            return [(self.tokenizer(t, add_special_tokens=req.add_special_tokens)["input_ids"], t) for t in texts]
        if req.feedback not in (None, "none"):
            raise ServeError(400, "feedback applies to text prompts; token-id prompts are used exactly as given",
                             "feedback")
        lists = [p] if not p or isinstance(p[0], int) else p
        for ids in lists:
            self._check_ids(ids, "prompt")
        return [(list(ids), None) for ids in lists]

    def _plan_completion(self, req: CompletionRequest) -> _Plan:
        sampling = self._sampling(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default
        if req.best_of is not None and req.best_of != req.n:
            raise ServeError(400, "best_of is not supported by this server (leave it out or equal to n)", "best_of")
        if req.stream and req.echo and req.logprobs is not None:
            raise ServeError(400, "echo with logprobs is not streamed by this server; use stream=false", "logprobs")
        if isinstance(req.prompt, str):
            # A text that long cannot fit the context whatever it holds: refuse it before tokenizing.
            self._check_chars(req.prompt, "prompt")
        elif req.prompt and isinstance(req.prompt[0], str):
            for k, text in enumerate(req.prompt):
                self._check_chars(text, f"prompt[{k}]")
        prompts = self._completion_prompts(req)
        for ids, _ in prompts:
            if not ids:
                raise ServeError(400, "the prompt is empty (no tokens)", "prompt")
            self._check_length(ids, max_tokens)
        rows = [Row(ids, max_tokens, logprobs=req.logprobs, prompt_logprobs=req.logprobs if req.echo else None,
                    **sampling) for ids, _ in prompts for _ in range(req.n)]
        echo = [(text if text is not None else "".join(self._pieces(ids))) if req.echo else ""
                for ids, text in prompts for _ in range(req.n)]
        return _Plan(rows, sum(len(ids) for ids, _ in prompts), echo)

    @functools.cached_property
    def _longest_token_chars(self) -> int:
        return max((len(t) for t in self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
                    if isinstance(t, str)), default=1)

    def _check_chars(self, text: str, param: str) -> None:
        # Every token covers at most _longest_token_chars characters (a byte-level token's string is
        # at least as long as its text), so a longer text cannot fit however it tokenizes; twice that
        # leaves room for a normalizer that composes characters (NFKC).
        limit = 2 * self.engine.max_model_len * max(self._longest_token_chars, 1)
        if len(text) > limit:
            raise ServeError(400, f"the {param} is {len(text):,} characters long: more than the model's context "
                             f"of {self.engine.max_model_len} tokens can hold", param)

    async def completions(self, req: CompletionRequest, request: Request):
        plan = await self._off_loop(self._plan_completion, req)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        if req.stream:
            def chunk(i: int, text: str, finish: str | None, delta: Delta | None = None) -> dict:
                logprobs = None
                if delta is not None and req.logprobs is not None:
                    logprobs = {**self._legacy_entries(delta.logprobs or [], delta.token_ids,
                                                       req.return_tokens_as_token_ids),
                                "text_offset": delta.offsets}
                return {**base, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

            return self._stream(plan, chunk, req, lstrip=False)
        results = await self._run(plan.rows, request)
        return await self._off_loop(self._completion_answer, req, plan, results, base)

    def _completion_answer(self, req: CompletionRequest, plan: _Plan, results: list[RowResult],
                           base: dict) -> JSONResponse:
        choices = []
        for i, (row, res) in enumerate(zip(plan.rows, results)):
            logprobs = None
            if req.logprobs is not None:
                logprobs = self._legacy_logprobs(row, res, plan.echo[i] if req.echo else None,
                                                 req.return_tokens_as_token_ids)
            choices.append({"index": i, "text": plan.echo[i] + res.text, "logprobs": logprobs,
                            "finish_reason": res.finish_reason})
        return JSONResponse({**base, "choices": choices, "usage": _usage(plan.prompt_tokens, results)})

    def _legacy_entries(self, entries: Sequence[TokenLogprob | None], token_ids: Sequence[int], as_ids: bool) -> dict:
        """``tokens``, ``token_logprobs`` and ``top_logprobs`` in OpenAI's legacy completions shape."""
        name = (lambda t: f"token_id:{t}") if as_ids else self._token_text
        top_logprobs: list[dict | None] = []
        for entry in entries:
            if entry is None:
                top_logprobs.append(None)
                continue
            tok, lp, alts = entry
            top: dict[str, float] = {}
            for t, v in sorted([(tok, lp), *alts], key=lambda x: -x[1]):
                top.setdefault(name(t), _finite(v))  # two ids may print alike: the likelier one stays
            top_logprobs.append(top)
        return {"tokens": [name(t) for t in token_ids],
                "token_logprobs": [_finite(e[1]) if e else None for e in entries], "top_logprobs": top_logprobs}

    def _legacy_logprobs(self, row: Row, res: RowResult, echo_text: str | None, as_ids: bool) -> dict:
        """OpenAI's legacy completions shape, which lm-evaluation-harness reads: with echo, every
        prompt token (the first with null) and then every generated token, EOS included."""
        entries: list[TokenLogprob | None] = []
        offsets: list[int] = []
        if echo_text is not None:
            entries.extend(res.prompt_logprobs or [])
            pos = 0
            for piece in self._pieces(row.ids):
                offsets.append(pos)
                pos += len(piece)
            start = len(echo_text)
            token_ids = list(row.ids)
        else:
            start, token_ids = 0, []
        entries.extend(res.logprobs or [])
        for piece in res.pieces:
            offsets.append(start)
            start += len(piece)
        token_ids.extend(res.token_ids)
        return {**self._legacy_entries(entries, token_ids, as_ids), "text_offset": offsets}

    def _plan_chat(self, req: ChatRequest) -> _Plan:
        sampling = self._sampling(req)
        sampling["stop"] = sampling["stop"] + tuple(s for s in self.prompter.stop_strings() if s not in sampling["stop"])
        if req.top_logprobs is not None and not req.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        for k, m in enumerate(req.messages):
            if isinstance(m.content, str):
                self._check_chars(m.content, f"messages[{k}].content")
        ids = self.prompter.chat_ids(_turns(req.messages), req.feedback)
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is None:
            self._check_length(ids, 0)
            asked = min(self.max_tokens, self.engine.max_model_len - len(ids))
            if asked < 1:
                raise ServeError(400, f"the prompt ({len(ids)} tokens) fills the model's context", "messages")
        self._check_length(ids, asked)
        rows = [Row(ids, asked, logprobs=(req.top_logprobs or 0) if req.logprobs else None, **sampling)
                for _ in range(req.n)]
        return _Plan(rows, len(ids))

    async def chat_completions(self, req: ChatRequest, request: Request):
        plan = await self._off_loop(self._plan_chat, req)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": created, "model": self.model_name}
        if req.stream:
            def chunk(i: int, text: str | None, finish: str | None, delta: Delta | None = None) -> dict:
                content = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
                logprobs = None
                if delta is not None and req.logprobs:
                    logprobs = {"content": [_chat_logprob(self._token_text, e) for e in delta.logprobs or []]}
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": i, "delta": content, "logprobs": logprobs, "finish_reason": finish}]}

            return self._stream(plan, chunk, req, lstrip=True)
        results = await self._run(plan.rows, request)
        return await self._off_loop(self._chat_answer, req, plan, results, base)

    def _chat_answer(self, req: ChatRequest, plan: _Plan, results: list[RowResult], base: dict) -> JSONResponse:
        choices = []
        for i, res in enumerate(results):
            logprobs = None
            if req.logprobs:
                logprobs = {"content": [_chat_logprob(self._token_text, e) for e in res.logprobs or []]}
            choices.append({"index": i, "message": {"role": "assistant", "content": res.text.lstrip()},
                            "logprobs": logprobs, "finish_reason": res.finish_reason})
        return JSONResponse({**base, "choices": choices, "usage": _usage(plan.prompt_tokens, results)})

    def _stream(self, plan: _Plan, chunk, req: _Sampling, lstrip: bool) -> StreamingResponse:
        """Server-sent events: one chunk per text delta (with its tokens' logprobs when asked), a
        final chunk per choice, usage if asked, [DONE]."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        rows = plan.rows

        def on_event(kind: str, index: int, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens
                loop.call_soon_threadsafe(events.put_nowait, (kind, index, payload))

        job = self._submit(rows, on_event)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def body() -> AsyncIterator[str]:
            try:
                started = [not lstrip] * len(rows)
                for i in range(len(rows)):
                    if lstrip:  # chat: the first chunk names the role
                        yield _sse(chunk(i, None, None))
                    elif plan.echo is not None and plan.echo[i]:
                        yield _sse(chunk(i, plan.echo[i], None))
                left, results = len(rows), [None] * len(rows)
                while left:
                    kind, i, payload = await events.get()
                    if kind == "delta":
                        text = payload.text
                        if not started[i]:
                            text = text.lstrip()
                            started[i] = bool(text)
                        if text or payload.token_ids:
                            yield _sse(chunk(i, text, None, payload))
                    elif kind == "done":
                        results[i] = payload
                        left -= 1
                        yield _sse(chunk(i, "", payload.finish_reason))
                    else:
                        yield _sse({"error": {"message": f"the model failed on this batch: {payload}",
                                              "type": "server_error", "param": None, "code": 500}})
                        return
                if include_usage:
                    yield _sse({**chunk(0, "", None), "choices": [], "usage": _usage(plan.prompt_tokens, results)})
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # finished, or the client went away: nothing more to compute

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- the original server's endpoints (EasyLM LMServer) ------------------------------------------------
    def _prefix_ids(self, text: str) -> list[int]:
        """A context's ids with the tokenizer's own BOS; an empty one is BOS (or EOS when there is no BOS)."""
        ids = self.tokenizer(text)["input_ids"] if text else []
        if not ids:
            first = self.tokenizer.bos_token_id
            ids = [first if first is not None else self.engine.eos_ids[0]]
        return ids

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _legacy_texts(self, texts: Sequence[str] | None, param: str) -> None:
        for text in texts or []:
            self._check_chars(text, param)

    async def loglikelihood(self, data: LegacyRequest, request: Request):
        """Sum of logprobs of each ``text`` after its ``prefix_text``, and whether it is the greedy choice."""
        _refuse_unknown(data)
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of continuations)", "text")
        prefixes = data.prefix_text if data.prefix_text is not None else [""] * len(data.text)
        if len(prefixes) != len(data.text):
            raise ServeError(400, f"prefix_text has {len(prefixes)} items but text has {len(data.text)}", "text")

        def plan() -> tuple[list[Row], list[int]]:
            self._legacy_texts(prefixes, "prefix_text")
            self._legacy_texts(data.text, "text")
            rows, spans = [], []
            for prefix, text in zip(prefixes, data.text):
                ctx, cont = self._prefix_ids(prefix), self._plain_ids(text)
                self._check_length(ctx + cont, 0, "text")
                rows.append(Row(ctx + cont, prompt_logprobs=1))
                spans.append(len(ctx))
            return rows, spans

        rows, spans = await self._off_loop(plan)
        results = await self._run(rows, request)
        ll, greedy = [], []
        for res, start in zip(results, spans):
            entries = [e for e in (res.prompt_logprobs or [])[start:] if e is not None]
            ll.append(sum(e[1] for e in entries))
            greedy.append(all(e[2] and e[2][0][0] == e[0] for e in entries))
        return {"prefix_text": data.prefix_text, "text": data.text, "log_likelihood": [_finite(v) for v in ll],
                "is_greedy": greedy}

    async def loglikelihood_rolling(self, data: LegacyRequest, request: Request):
        """Logprob of each whole ``text`` (after BOS, or EOS for models without one), in windows of the
        model's context where it is longer."""
        _refuse_unknown(data)
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of strings)", "text")
        limit = self.engine.max_model_len

        def plan() -> tuple[list[Row], list[tuple[int, int]]]:
            rows, owners = [], []
            for k, text in enumerate(data.text):
                ids = self._prefix_ids("")[:1] + self._plain_ids(text)
                pos = 1
                while pos < len(ids):  # each window scores ids[pos:end] with as much context as fits
                    end = min(len(ids), pos + limit - 1)
                    start = max(0, end - limit)
                    rows.append(Row(ids[start:end], prompt_logprobs=1))
                    owners.append((k, pos - start))
                    pos = end
            return rows, owners

        rows, owners = await self._off_loop(plan)
        results = await self._run(rows, request)
        ll, greedy = [0.0] * len(data.text), [True] * len(data.text)
        for res, (k, first) in zip(results, owners):
            entries = [e for e in (res.prompt_logprobs or [])[first:] if e is not None]
            ll[k] += sum(e[1] for e in entries)
            greedy[k] = greedy[k] and all(e[2] and e[2][0][0] == e[0] for e in entries)
        return {"text": data.text, "log_likelihood": [_finite(v) for v in ll], "is_greedy": greedy}

    def _legacy_rows(self, prefixes: list[str], temperature: float, stops: list[tuple[str, ...]]) -> list[Row]:
        self._legacy_texts(prefixes, "prefix_text")
        rows = []
        for prefix, stop in zip(prefixes, stops):
            ids = self._prefix_ids(prefix)
            self._check_length(ids, 1, "prefix_text")
            rows.append(Row(ids, min(self.max_tokens, self.engine.max_model_len - len(ids)), temperature=temperature,
                            stop=stop))
        return rows

    async def generate(self, data: LegacyRequest, request: Request):
        _refuse_unknown(data)
        if data.prefix_text is None:
            raise ServeError(400, "give 'prefix_text' (a list of prompts)", "prefix_text")
        temperature = 1.0 if data.temperature is None else data.temperature  # the original's default
        rows = await self._off_loop(self._legacy_rows, data.prefix_text, temperature, [()] * len(data.prefix_text))
        results = await self._run(rows, request)
        return {"prefix_text": data.prefix_text, "output_text": [r.text for r in results], "temperature": temperature}

    async def greedy_until(self, data: LegacyRequest, request: Request):
        _refuse_unknown(data)
        if data.prefix_text is None or data.until is None:
            raise ServeError(400, "give 'prefix_text' and 'until' (one stop string or list per prompt)", "until")
        if len(data.until) != len(data.prefix_text):
            raise ServeError(400, f"until has {len(data.until)} items but prefix_text has {len(data.prefix_text)}",
                             "until")
        stops = [(u,) if isinstance(u, str) else tuple(u) for u in data.until]
        if any(len(s) > MAX_STOPS for s in stops):
            raise ServeError(400, f"at most {MAX_STOPS} stop strings per prompt", "until")
        rows = await self._off_loop(self._legacy_rows, data.prefix_text, 0.0, stops)
        results = await self._run(rows, request)
        return {"prefix_text": data.prefix_text, "until": data.until, "max_length": self.max_tokens,
                "output_text": [r.text for r in results]}

    async def legacy_chat(self, data: LegacyChatRequest, request: Request):
        """The original's text chat: ``context`` is the conversation so far as text; the turn is added
        in the CoH format (``User: ... A helpful answer:``) and the new context comes back."""
        _refuse_unknown(data)
        temperature = 1.0 if data.temperature is None else data.temperature
        phrases, eos = self.prompter.phrases, self.tokenizer.eos_token or ""
        phrase = self.prompter.phrase(data.feedback)
        turn = f"{phrases.user} {data.prompt}" + (f" {phrase}" if phrase else "")
        # As training renders context (coh.data.records.separator): the context as one segment.
        joiner = separator(Segment(data.context, eos=bool(eos) and data.context.endswith(eos)) if data.context else None)
        context = data.context + joiner + turn

        def plan() -> Row:
            self._check_chars(context, "context")
            ids = self._prefix_ids(context)
            self._check_length(ids, 1, "context")
            return Row(ids, min(self.max_tokens, self.engine.max_model_len - len(ids)), temperature=temperature,
                       stop=(phrases.user,))

        (res,) = await self._run([await self._off_loop(plan)], request)
        response = res.text.strip()
        return {"response": response, "context": f"{context} {response}{eos}", "temperature": temperature}


class _BodyLimit:
    """413, in the API's error shape, for a body over the limit: at once when Content-Length says
    so, else as soon as the bytes received pass it. (Starlette's own limit answers in plain text.)"""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (f"the request body is larger than this server's limit of {self.limit / 2**20:.3g} MiB "
                "(coh serve --max-body-mb)")

    async def _too_large(self, scope, receive, send) -> None:
        await _error(413, self._message(), headers={"Connection": "close"})(scope, receive, send)


ERRORS = {400: "malformed or out-of-range request, unsupported field, text that is not Unicode",
          401: "missing or wrong API key", 404: "unknown route or model", 405: "wrong method",
          413: "body over --max-body-mb", 500: "the model failed on this batch", 503: "queue full (see Retry-After)"}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": "integer"}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema with the errors this server really answers (OpenAI's shape, 400 for a bad
    body) instead of FastAPI's 422, and streaming routes that may answer server-sent events."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                responses = operation["responses"]
                responses.pop("422", None)
                for code, why in ERRORS.items():
                    responses.setdefault(str(code), {"description": why, "content": error})
                if path in ("/v1/completions", "/v1/chat/completions"):
                    # Each event is a JSON chunk of the answer (or "[DONE]") in its data field.
                    responses["200"]["content"]["text/event-stream"] = {"schema": {
                        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}
        app.openapi_schema = schema
    return app.openapi_schema


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (after the body, ASGI's next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # a server that answers with more (empty) body parts: don't spin


def _http_message(request: Request, e: StarletteHTTPException) -> str:
    if e.status_code == 404:
        return f"no route {request.url.path}: see /openapi.json for this server's routes"
    if e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    cause = e.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8: byte 0x{cause.object[cause.start]:02x} at position {cause.start} ({cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body nests JSON arrays or objects too deeply"
    if cause is not None and e.status_code == 400:
        return f"the body could not be read as JSON: {type(cause).__name__}: {cause}"
    return str(e.detail)


def _finite(v: float) -> float:
    return v if math.isfinite(v) else NO_PROBABILITY


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, results: Sequence[RowResult | None]) -> dict:
    """Counts every generated token, EOS included (as OpenAI and vLLM do)."""
    completion = sum(len(r.token_ids) for r in results if r is not None)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _chat_logprob(name, entry: TokenLogprob) -> dict:
    tok, lp, alts = entry

    def one(t: int, v: float) -> dict:
        text = name(t)
        return {"token": text, "logprob": _finite(v), "bytes": list(text.encode("utf-8"))}

    return {**one(tok, lp), "top_logprobs": [one(t, v) for t, v in alts]}


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _turns(messages: Sequence[Message]) -> list[Turn]:
    """OpenAI messages into turns; text content parts are joined, other kinds refused."""
    turns = []
    for k, m in enumerate(messages):
        if isinstance(m.content, list):
            kinds = [p.type for p in m.content if p.type != "text"]
            if kinds:
                raise ServeError(400, f"messages[{k}].content: only text parts are supported, got {kinds[0]!r}",
                                 f"messages[{k}].content")
            text = "".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        turns.append(Turn(CHAT_ROLES[m.role], text))
    if not turns:
        raise ServeError(400, "messages must not be empty", "messages")
    return turns


# What each field that takes several shapes expects, for errors that would otherwise list every shape.
SHAPES = {"prompt": "a string, a list of strings, a list of token ids (integers >= 0) or a list of such lists",
          "stop": f"a string or a list of at most {MAX_STOPS} strings, each 1 to {MAX_STOP_CHARS} characters",
          "until": f"a list of stop strings (1 to {MAX_STOP_CHARS} characters) or a list of such lists",
          "content": "a string, a list of content parts ({\"type\": \"text\", \"text\": ...}) or null"}
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|nullable)$|\[|^function-|^constrained-")


def _describe_validation(errors: Sequence[dict]) -> tuple[str, str | None]:
    """One readable line per field: where, what was wrong, what was expected; and the first field."""
    lines: list[str] = []
    params: list[str] = []
    for e in errors:
        if e.get("type") == "json_invalid":
            lines.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
            continue
        if e.get("type") == "lone_surrogate":
            lines.append(e["msg"])
            params.append(e.get("ctx", {}).get("field"))
            continue
        loc = [x for x in e.get("loc", ()) if x != "body"]
        union = any(isinstance(x, str) and _TYPE_TAG.search(x) for x in loc)
        loc = [x for x in loc if not (isinstance(x, str) and _TYPE_TAG.search(x))]
        shaped = [k for k, x in enumerate(loc) if x in SHAPES] if union else []
        if shaped:  # a field of several shapes: name the field, not the shape that came closest
            loc = loc[: shaped[-1] + 1]
        path = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "body"
        if shaped:
            line = f"field '{path}': expected {SHAPES[loc[-1]]}"
        elif e.get("type") == "missing":
            line = f"field '{path}' is required"
        else:
            line = f"field '{path}': {e.get('msg')}"
        if line not in lines:
            lines.append(line)
            params.append(path if path != "body" else None)
    more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
    return "; ".join(lines[:5]) + more, next((p for p in params if p), None)
