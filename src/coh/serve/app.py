"""HTTP routes: OpenAI's completions and chat completions (with streaming), tokenizer endpoints
for lm-evaluation-harness, the original EasyLM server's endpoints, health probes and the chat page.

Errors answer in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a
malformed or out-of-range request (the message names the field and what was expected), 401 for
a missing or wrong API key, 404 for an unknown model name, 503 when the queue is full, 500 when
the model failed on a batch (the server stays up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from coh.data.feedback import Turn
from coh.serve.engine import Engine, QueueFull, Row, RowResult, TextDecoder, TokenLogprob
from coh.serve.prompts import Prompter

STATIC = Path(__file__).parent / "static"
MAX_LOGPROBS = 20
# The chat page shows model text with textContent only; this policy stops any script that would
# slip in anyway (inline handlers such as onerror never run under it).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")


class ServeError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


# -- request bodies ----------------------------------------------------------------------------------
class _Body(BaseModel):
    # Unknown fields are accepted (clients send vendor extras); the ones we cannot honour are refused below.
    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extra; 0 or -1: off
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    feedback: str | None = None  # good, bad, none, or a literal phrase (see coh.serve.prompts)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    add_special_tokens: bool = True  # vLLM's extra: for string prompts only; token ids are never changed
    return_tokens_as_token_ids: bool = False  # vLLM's extra: "token_id:N" instead of token text


class ContentPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    feedback: str | None = None
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


class LegacyRequest(_Body):
    """The original server's body (EasyLM ``InferenceRequest``)."""

    prefix_text: list[str] | None = None
    text: list[str] | None = None
    until: list[str] | list[list[str]] | None = None
    temperature: float | None = None


class LegacyChatRequest(_Body):
    prompt: str
    context: str = ""
    temperature: float | None = None
    feedback: str | None = None


# -- the app -------------------------------------------------------------------------------------------
class Server:
    """Routes over one engine; ``app`` is the FastAPI application."""

    def __init__(self, engine: Engine, prompter: Prompter, model_name: str, api_key: str | None = None,
                 max_tokens: int = 512, model_path: str = ""):
        self.engine, self.prompter, self.tokenizer = engine, prompter, engine.tokenizer
        self.model_name, self.model_path, self.api_key = model_name, model_path or model_name, api_key
        self.max_tokens = max_tokens
        self.created = int(time.time())
        self.vocab_size = max(len(self.tokenizer), engine.model.get_input_embeddings().num_embeddings)
        self.app = self._build()

    # -- plumbing ------------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            self.engine.start()
            yield

        app = FastAPI(title="coh serve", lifespan=lifespan, docs_url=None, redoc_url=None)

        @app.exception_handler(ServeError)
        async def serve_error(request: Request, e: ServeError):
            return _error(e.status, e.message, e.param, e.kind)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, e: RequestValidationError):
            return _error(400, _describe_validation(e.errors()), _first_field(e.errors()))

        @app.exception_handler(QueueFull)
        async def busy(request: Request, e: QueueFull):
            return _error(503, str(e), kind="server_busy")

        @app.exception_handler(ValueError)
        async def bad_value(request: Request, e: ValueError):
            return _error(400, str(e))

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

    async def _run(self, rows: Sequence[Row]) -> list[RowResult]:
        try:
            job = self.engine.submit(rows)
        except QueueFull as e:
            raise ServeError(503, str(e), kind="server_busy") from None
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.cancel()
            raise
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
        return {"status": "ok", "queued": self.engine.queued(), **self.engine.stats}

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
        if (req.prompt is None) == (req.messages is None):
            raise ServeError(400, "give exactly one of 'prompt' (text) or 'messages' (chat)", "prompt")
        if req.messages is not None:
            ids = self.prompter.chat_ids(_turns(req.messages), req.feedback)
        else:
            ids = self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        out: dict[str, Any] = {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_model_len}
        if req.return_token_strs:
            out["token_strs"] = self.tokenizer.convert_ids_to_tokens(ids)
        return out

    async def detokenize(self, req: DetokenizeRequest):
        self._check_ids(req.tokens, "tokens")
        return {"prompt": self.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    def _check_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ServeError(400, f"token id {bad[0]} is outside the vocabulary (0 to {self.vocab_size - 1})", param)

    # -- OpenAI ---------------------------------------------------------------------------------------------
    def _sampling(self, req: _Sampling) -> dict:
        """Validated sampling settings shared by both OpenAI routes."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise ServeError(400, f"{name} is not supported by this server (give 0 or leave it out)", name)
        if req.logit_bias:
            raise ServeError(400, "logit_bias is not supported by this server", "logit_bias")
        if req.best_of is not None and req.best_of != req.n:
            raise ServeError(400, "best_of is not supported by this server (leave it out or equal to n)", "best_of")
        temperature = 1.0 if req.temperature is None else req.temperature
        if not 0 <= temperature <= 100:
            raise ServeError(400, f"temperature must be between 0 and 100, got {temperature}", "temperature")
        top_p = 1.0 if req.top_p is None else req.top_p
        if not 0 < top_p <= 1:
            raise ServeError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
        top_k = 0 if req.top_k in (None, -1) else req.top_k
        if top_k < 0:
            raise ServeError(400, f"top_k must be -1, 0 (off) or positive, got {top_k}", "top_k")
        if not 1 <= req.n <= 128:
            raise ServeError(400, f"n must be between 1 and 128, got {req.n}", "n")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stop):
            raise ServeError(400, "stop strings must not be empty", "stop")
        if req.stream_options is not None and not req.stream:
            raise ServeError(400, "stream_options needs stream=true", "stream_options")
        return {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": req.seed, "stop": tuple(stop)}

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

    async def completions(self, req: CompletionRequest, request: Request):
        self._check_model(req.model)
        sampling = self._sampling(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default
        if max_tokens < 0:
            raise ServeError(400, f"max_tokens must be 0 or more, got {max_tokens}", "max_tokens")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise ServeError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}, got {req.logprobs}", "logprobs")
        if req.stream and req.logprobs is not None:
            raise ServeError(400, "logprobs are not streamed by this server; use stream=false", "logprobs")
        prompts = self._completion_prompts(req)
        for ids, _ in prompts:
            if not ids:
                raise ServeError(400, "the prompt is empty (no tokens)", "prompt")
            self._check_length(ids, max_tokens)
        rows = [Row(ids, max_tokens, logprobs=req.logprobs,
                    prompt_logprobs=req.logprobs if req.echo else None, **sampling)
                for ids, _ in prompts for _ in range(req.n)]
        echo_texts = [(text if text is not None else "".join(self._pieces(ids))) if req.echo else ""
                      for ids, text in prompts for _ in range(req.n)]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        usage_prompt = sum(len(ids) for ids, _ in prompts)
        if req.stream:
            def chunk(i: int, text: str, finish: str | None) -> dict:
                return {**base, "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}]}

            return self._stream(rows, chunk, [echo_texts[i] for i in range(len(rows))], usage_prompt, req, lstrip=False)
        results = await self._run(rows)
        choices = []
        for i, (row, res) in enumerate(zip(rows, results)):
            logprobs = None
            if req.logprobs is not None:
                logprobs = self._legacy_logprobs(row, res, echo_texts[i] if req.echo else None,
                                                 req.return_tokens_as_token_ids)
            choices.append({"index": i, "text": echo_texts[i] + res.text, "logprobs": logprobs,
                            "finish_reason": res.finish_reason})
        return {**base, "choices": choices, "usage": _usage(usage_prompt, results)}

    def _legacy_logprobs(self, row: Row, res: RowResult, echo_text: str | None, as_ids: bool) -> dict:
        """OpenAI's legacy completions shape, which lm-evaluation-harness reads."""
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
        name = (lambda t: f"token_id:{t}") if as_ids else self._token_text
        top_logprobs: list[dict | None] = []
        for entry in entries:
            if entry is None:
                top_logprobs.append(None)
                continue
            tok, lp, alts = entry
            top: dict[str, float] = {}
            for t, v in sorted([(tok, lp), *alts], key=lambda x: -x[1]):
                top.setdefault(name(t), v)  # two ids may print alike: the likelier one stays
            top_logprobs.append(top)
        return {"tokens": [name(t) for t in token_ids], "token_logprobs": [e[1] if e else None for e in entries],
                "top_logprobs": top_logprobs, "text_offset": offsets}

    async def chat_completions(self, req: ChatRequest, request: Request):
        self._check_model(req.model)
        sampling = self._sampling(req)
        sampling["stop"] = sampling["stop"] + tuple(s for s in self.prompter.stop_strings() if s not in sampling["stop"])
        if req.top_logprobs is not None and not (req.logprobs and 0 <= req.top_logprobs <= MAX_LOGPROBS):
            raise ServeError(400, f"top_logprobs needs logprobs=true and must be between 0 and {MAX_LOGPROBS}",
                             "top_logprobs")
        if req.stream and req.logprobs:
            raise ServeError(400, "logprobs are not streamed by this server; use stream=false", "logprobs")
        ids = self.prompter.chat_ids(_turns(req.messages), req.feedback)
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is not None and asked < 1:
            raise ServeError(400, f"max_tokens must be at least 1, got {asked}", "max_tokens")
        if asked is None:
            self._check_length(ids, 0)
            asked = min(self.max_tokens, self.engine.max_model_len - len(ids))
            if asked < 1:
                raise ServeError(400, f"the prompt ({len(ids)} tokens) fills the model's context", "messages")
        self._check_length(ids, asked)
        rows = [Row(ids, asked, logprobs=(req.top_logprobs or 0) if req.logprobs else None, **sampling)
                for _ in range(req.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": created, "model": self.model_name}
        if req.stream:
            def chunk(i: int, text: str | None, finish: str | None) -> dict:
                delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            return self._stream(rows, chunk, None, len(ids), req, lstrip=True)
        results = await self._run(rows)
        choices = []
        for i, res in enumerate(results):
            logprobs = None
            if req.logprobs:
                logprobs = {"content": [_chat_logprob(self._token_text, e) for e in res.logprobs or []]}
            choices.append({"index": i, "message": {"role": "assistant", "content": res.text.lstrip()},
                            "logprobs": logprobs, "finish_reason": res.finish_reason})
        return {**base, "choices": choices, "usage": _usage(len(ids), results)}

    def _stream(self, rows: list[Row], chunk, echo: list[str] | None, usage_prompt: int, req: _Sampling,
                lstrip: bool) -> StreamingResponse:
        """Server-sent events: one chunk per text delta, a final chunk per choice, usage if asked, [DONE]."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(kind: str, index: int, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens
                loop.call_soon_threadsafe(events.put_nowait, (kind, index, payload))

        try:
            job = self.engine.submit(rows, on_event)
        except QueueFull as e:
            raise ServeError(503, str(e), kind="server_busy") from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def body() -> AsyncIterator[str]:
            try:
                started = [not lstrip] * len(rows)
                for i in range(len(rows)):
                    if lstrip:  # chat: the first chunk names the role
                        yield _sse(chunk(i, None, None))
                    elif echo is not None and echo[i]:
                        yield _sse(chunk(i, echo[i], None))
                left, results = len(rows), [None] * len(rows)
                while left:
                    kind, i, payload = await events.get()
                    if kind == "delta":
                        text = payload
                        if not started[i]:
                            text = text.lstrip()
                            started[i] = bool(text)
                        if text:
                            yield _sse(chunk(i, text, None))
                    elif kind == "done":
                        results[i] = payload
                        left -= 1
                        yield _sse(chunk(i, "", payload.finish_reason))
                    else:
                        yield _sse({"error": {"message": f"the model failed on this batch: {payload}",
                                              "type": "server_error", "param": None, "code": 500}})
                        return
                if include_usage:
                    yield _sse({**chunk(0, "", None), "choices": [], "usage": _usage(usage_prompt, results)})
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

    async def loglikelihood(self, data: LegacyRequest):
        """Sum of logprobs of each ``text`` after its ``prefix_text``, and whether it is the greedy choice."""
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of continuations)", "text")
        prefixes = data.prefix_text if data.prefix_text is not None else [""] * len(data.text)
        if len(prefixes) != len(data.text):
            raise ServeError(400, f"prefix_text has {len(prefixes)} items but text has {len(data.text)}", "text")
        rows, spans = [], []
        for prefix, text in zip(prefixes, data.text):
            ctx, cont = self._prefix_ids(prefix), self._plain_ids(text)
            self._check_length(ctx + cont, 0, "text")
            rows.append(Row(ctx + cont, prompt_logprobs=1))
            spans.append(len(ctx))
        results = await self._run(rows)
        ll, greedy = [], []
        for res, start in zip(results, spans):
            entries = [e for e in (res.prompt_logprobs or [])[start:] if e is not None]
            ll.append(sum(e[1] for e in entries))
            greedy.append(all(e[2] and e[2][0][0] == e[0] for e in entries))
        return {"prefix_text": data.prefix_text, "text": data.text, "log_likelihood": ll, "is_greedy": greedy}

    async def loglikelihood_rolling(self, data: LegacyRequest):
        """Logprob of each whole ``text`` (after BOS, or EOS for models without one), in windows of the
        model's context where it is longer."""
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of strings)", "text")
        limit = self.engine.max_model_len
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
        results = await self._run(rows)
        ll, greedy = [0.0] * len(data.text), [True] * len(data.text)
        for res, (k, first) in zip(results, owners):
            entries = [e for e in (res.prompt_logprobs or [])[first:] if e is not None]
            ll[k] += sum(e[1] for e in entries)
            greedy[k] = greedy[k] and all(e[2] and e[2][0][0] == e[0] for e in entries)
        return {"text": data.text, "log_likelihood": ll, "is_greedy": greedy}

    def _legacy_rows(self, prefixes: list[str], temperature: float, stops: list[tuple[str, ...]]) -> list[Row]:
        rows = []
        for prefix, stop in zip(prefixes, stops):
            ids = self._prefix_ids(prefix)
            self._check_length(ids, 1, "prefix_text")
            rows.append(Row(ids, min(self.max_tokens, self.engine.max_model_len - len(ids)), temperature=temperature,
                            stop=stop))
        return rows

    async def generate(self, data: LegacyRequest):
        if data.prefix_text is None:
            raise ServeError(400, "give 'prefix_text' (a list of prompts)", "prefix_text")
        temperature = 1.0 if data.temperature is None else data.temperature  # the original's default
        if temperature < 0:
            raise ServeError(400, f"temperature must be 0 or more, got {temperature}", "temperature")
        results = await self._run(self._legacy_rows(data.prefix_text, temperature, [()] * len(data.prefix_text)))
        return {"prefix_text": data.prefix_text, "output_text": [r.text for r in results], "temperature": temperature}

    async def greedy_until(self, data: LegacyRequest):
        if data.prefix_text is None or data.until is None:
            raise ServeError(400, "give 'prefix_text' and 'until' (one stop string or list per prompt)", "until")
        if len(data.until) != len(data.prefix_text):
            raise ServeError(400, f"until has {len(data.until)} items but prefix_text has {len(data.prefix_text)}",
                             "until")
        stops = [(u,) if isinstance(u, str) else tuple(u) for u in data.until]
        if any(not s for stop in stops for s in stop):
            raise ServeError(400, "stop strings must not be empty", "until")
        results = await self._run(self._legacy_rows(data.prefix_text, 0.0, stops))
        return {"prefix_text": data.prefix_text, "until": data.until, "max_length": self.max_tokens,
                "output_text": [r.text for r in results]}

    async def legacy_chat(self, data: LegacyChatRequest):
        """The original's text chat: ``context`` is the conversation so far as text; the turn is added
        in the CoH format (``User: ... A helpful answer:``) and the new context comes back."""
        temperature = 1.0 if data.temperature is None else data.temperature
        if temperature < 0:
            raise ServeError(400, f"temperature must be 0 or more, got {temperature}", "temperature")
        phrases, eos = self.prompter.phrases, self.tokenizer.eos_token or ""
        phrase = self.prompter.phrase(data.feedback)
        turn = f"{phrases.user} {data.prompt}" + (f" {phrase}" if phrase else "")
        # As training renders context: a space between segments, none right after an EOS.
        joiner = "" if not data.context or (eos and data.context.endswith(eos)) else " "
        context = data.context + joiner + turn
        ids = self._prefix_ids(context)
        self._check_length(ids, 1, "context")
        row = Row(ids, min(self.max_tokens, self.engine.max_model_len - len(ids)), temperature=temperature,
                  stop=(phrases.user,))
        (res,) = await self._run([row])
        response = res.text.strip()
        return {"response": response, "context": f"{context} {response}{eos}", "temperature": temperature}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, results: Sequence[RowResult | None]) -> dict:
    completion = sum(len(r.token_ids) for r in results if r is not None)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _chat_logprob(name, entry: TokenLogprob) -> dict:
    tok, lp, alts = entry

    def one(t: int, v: float) -> dict:
        text = name(t)
        return {"token": text, "logprob": v, "bytes": list(text.encode("utf-8"))}

    return {**one(tok, lp), "top_logprobs": [one(t, v) for t, v in alts]}


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _turns(messages: Sequence[Message]) -> list[Turn]:
    """OpenAI messages into turns; text content parts are joined, other kinds refused."""
    turns = []
    for k, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise ServeError(400, f"messages[{k}].role must be one of {sorted(CHAT_ROLES)}, got {m.role!r}",
                             f"messages[{k}].role")
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


def _first_field(errors: Sequence[dict]) -> str | None:
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if loc:
            return ".".join(loc)
    return None


def _describe_validation(errors: Sequence[dict]) -> str:
    """One readable line per problem: the field, what was wrong, what was expected."""
    lines = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            lines.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        lines.append(f"field '{loc}': {e.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(lines) + more

