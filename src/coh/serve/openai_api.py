"""OpenAI's routes: ``/v1/completions`` and ``/v1/chat/completions`` (with streaming),
``/v1/models``, and vLLM's tokenizer endpoints (``/tokenizer_info``, ``/tokenize``,
``/detokenize``, also under ``/v1``), which lm-evaluation-harness uses instead of a local
tokenizer. Each route validates its body (``coh.serve.schemas``), turns it into engine requests
on the tokenizer thread (a ``Plan``), runs them, and renders the answer (``coh.serve.answers``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from coh.data.feedback import Turn
from coh.generation.requests import Delta, GenRequest, GenResult
from coh.serve.answers import Plan, chat_logprob, completions_logprob_entries, completions_logprobs, usage
from coh.serve.errors import ServeError
from coh.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    SamplingRequest,
    TokenizeRequest,
    message_turns,
    refuse_unknown,
)
from coh.serve.streaming import Chunk, stream

if TYPE_CHECKING:
    from coh.serve.app import Server


class OpenAIRoutes:
    """The OpenAI and tokenizer routes of one ``Server``."""

    def __init__(self, server: Server):
        self.server = server

    def add_tokenizer_routes(self, router: APIRouter) -> None:
        for prefix in ("", "/v1"):
            router.add_api_route(f"{prefix}/tokenizer_info", self.tokenizer_info, methods=["GET"])
            router.add_api_route(f"{prefix}/tokenize", self.tokenize, methods=["POST"])
            router.add_api_route(f"{prefix}/detokenize", self.detokenize, methods=["POST"])

    def add_routes(self, router: APIRouter) -> None:
        router.add_api_route("/v1/models", self.models, methods=["GET"])
        router.add_api_route("/v1/completions", self.completions, methods=["POST"])
        router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])

    # -- tokenizer endpoints ---------------------------------------------------------------------------
    async def tokenizer_info(self):
        server = self.server
        tok = server.tokenizer
        template = server.prompter.base_template  # the model's own (None in the CoH format)
        return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "chat_template": template, "model_max_length": server.engine.max_model_len,
                "tokenizer_class": type(tok).__name__}

    async def tokenize(self, req: TokenizeRequest):
        refuse_unknown(req)
        self.server.check_model(req.model)
        return await self.server.off_loop(self._tokenize, req)

    def _tokenize(self, req: TokenizeRequest) -> JSONResponse:
        server = self.server
        if (req.prompt is None) == (req.messages is None):
            raise ServeError(400, "give exactly one of 'prompt' (text) or 'messages' (chat)", "prompt")
        if req.messages is not None:
            ids = server.prompter.chat_ids(message_turns(req.messages), req.feedback)
        else:
            ids = server.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        out: dict[str, Any] = {"tokens": ids, "count": len(ids), "max_model_len": server.engine.max_model_len}
        if req.return_token_strs:
            out["token_strs"] = server.tokenizer.convert_ids_to_tokens(ids)
        return JSONResponse(out)

    async def detokenize(self, req: DetokenizeRequest):
        server = self.server
        refuse_unknown(req)
        server.check_model(req.model)
        server.check_ids(req.tokens, "tokens")
        return await server.off_loop(
            lambda: JSONResponse({"prompt": server.tokenizer.decode(req.tokens, skip_special_tokens=False)}))

    # -- models, completions, chat -----------------------------------------------------------------------
    async def models(self):
        server = self.server
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "coh", "root": server.model_path,
                                            "max_model_len": server.engine.max_model_len}]}

    def _sampling(self, req: SamplingRequest) -> dict:
        """Validated sampling settings shared by both OpenAI routes (ranges are in the schemas)."""
        refuse_unknown(req)
        self.server.check_model(req.model)
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
        server = self.server
        p = req.prompt
        if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
            texts = [p] if isinstance(p, str) else p
            if req.feedback not in (None, "none"):
                # The prompt is the user's message, put in the prompt format the model was trained with.
                return [(server.prompter.chat_ids([Turn("user", t)], req.feedback), None) for t in texts]
            return [(server.tokenizer(t, add_special_tokens=req.add_special_tokens)["input_ids"], t) for t in texts]
        if req.feedback not in (None, "none"):
            raise ServeError(400, "feedback applies to text prompts; token-id prompts are used exactly as given",
                             "feedback")
        lists = [p] if not p or isinstance(p[0], int) else p
        for ids in lists:
            server.check_ids(ids, "prompt")
        return [(list(ids), None) for ids in lists]

    def _plan_completion(self, req: CompletionRequest) -> Plan:
        server = self.server
        sampling = self._sampling(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default
        if req.best_of is not None and req.best_of != req.n:
            raise ServeError(400, "best_of is not supported by this server (leave it out or equal to n)", "best_of")
        if req.stream and req.echo and req.logprobs is not None:
            raise ServeError(400, "echo with logprobs is not streamed by this server; use stream=false", "logprobs")
        if isinstance(req.prompt, str):
            # A text that long cannot fit the context whatever it holds: refuse it before tokenizing.
            server.check_chars(req.prompt, "prompt")
        elif req.prompt and isinstance(req.prompt[0], str):
            for k, text in enumerate(req.prompt):
                server.check_chars(text, f"prompt[{k}]")
        prompts = self._completion_prompts(req)
        for ids, _ in prompts:
            if not ids:
                raise ServeError(400, "the prompt is empty (no tokens)", "prompt")
            server.check_length(ids, max_tokens)
        requests = [GenRequest(ids, max_tokens, logprobs=req.logprobs,
                               prompt_logprobs=req.logprobs if req.echo else None, **sampling)
                    for ids, _ in prompts for _ in range(req.n)]
        echo = [(text if text is not None else "".join(server.pieces(ids))) if req.echo else ""
                for ids, text in prompts for _ in range(req.n)]
        return Plan(requests, sum(len(ids) for ids, _ in prompts), echo)

    def _token_name(self, as_ids: bool):
        return (lambda t: f"token_id:{t}") if as_ids else self.server.token_text

    def _answer_base(self, id_prefix: str, object_name: str) -> dict:
        return {"id": f"{id_prefix}-{uuid.uuid4().hex}", "object": object_name, "created": int(time.time()),
                "model": self.server.model_name}

    async def _reply(self, req: SamplingRequest, request: Request, plan: Plan, base: dict, chunk: Chunk,
                     answer: Callable, lstrip: bool):
        """The plan's answer: streamed in ``chunk``s, or run and rendered by ``answer(req, plan,
        results, base)`` on the tokenizer thread."""
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return stream(self.server.submit, plan, chunk, include_usage, lstrip)
        results = await self.server.run(plan.requests, request)
        return await self.server.off_loop(answer, req, plan, results, base)

    async def completions(self, req: CompletionRequest, request: Request):
        plan = await self.server.off_loop(self._plan_completion, req)
        base = self._answer_base("cmpl", "text_completion")
        name = self._token_name(req.return_tokens_as_token_ids)

        def chunk(i: int, text: str, finish: str | None, delta: Delta | None = None) -> dict:
            logprobs = None
            if delta is not None and req.logprobs is not None:
                logprobs = {**completions_logprob_entries(delta.logprobs or [], delta.token_ids, name),
                            "text_offset": delta.offsets}
            return {**base, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

        return await self._reply(req, request, plan, base, chunk, self._completion_answer, lstrip=False)

    def _completion_answer(self, req: CompletionRequest, plan: Plan, results: list[GenResult],
                           base: dict) -> JSONResponse:
        name = self._token_name(req.return_tokens_as_token_ids)
        choices = []
        for i, (gen, res) in enumerate(zip(plan.requests, results)):
            logprobs = None
            if req.logprobs is not None:
                echoed = plan.echo[i] if req.echo else None
                logprobs = completions_logprobs(gen, res, name, echoed,
                                                self.server.pieces(gen.ids) if echoed is not None else ())
            choices.append({"index": i, "text": plan.echo[i] + res.text, "logprobs": logprobs,
                            "finish_reason": res.finish_reason})
        return JSONResponse({**base, "choices": choices, "usage": usage(plan.prompt_tokens, results)})

    def _plan_chat(self, req: ChatRequest) -> Plan:
        server = self.server
        sampling = self._sampling(req)
        sampling["stop"] = sampling["stop"] + tuple(s for s in server.prompter.stop_strings()
                                                    if s not in sampling["stop"])
        if req.top_logprobs is not None and not req.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        for k, m in enumerate(req.messages):
            if isinstance(m.content, str):
                server.check_chars(m.content, f"messages[{k}].content")
        ids = server.prompter.chat_ids(message_turns(req.messages), req.feedback)
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is None:
            server.check_length(ids, 0)
            asked = min(server.max_new_tokens, server.engine.max_model_len - len(ids))
            if asked < 1:
                raise ServeError(400, f"the prompt ({len(ids)} tokens) fills the model's context", "messages")
        server.check_length(ids, asked)
        requests = [GenRequest(ids, asked, logprobs=(req.top_logprobs or 0) if req.logprobs else None, **sampling)
                    for _ in range(req.n)]
        return Plan(requests, len(ids))

    async def chat_completions(self, req: ChatRequest, request: Request):
        plan = await self.server.off_loop(self._plan_chat, req)
        base = self._answer_base("chatcmpl", "chat.completion")
        token_text = self.server.token_text

        def chunk(i: int, text: str | None, finish: str | None, delta: Delta | None = None) -> dict:
            content = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            logprobs = None
            if delta is not None and req.logprobs:
                logprobs = {"content": [chat_logprob(token_text, e) for e in delta.logprobs or []]}
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": i, "delta": content, "logprobs": logprobs, "finish_reason": finish}]}

        return await self._reply(req, request, plan, base, chunk, self._chat_answer, lstrip=True)

    def _chat_answer(self, req: ChatRequest, plan: Plan, results: list[GenResult], base: dict) -> JSONResponse:
        choices = []
        for i, res in enumerate(results):
            logprobs = None
            if req.logprobs:
                logprobs = {"content": [chat_logprob(self.server.token_text, e) for e in res.logprobs or []]}
            choices.append({"index": i, "message": {"role": "assistant", "content": res.text.lstrip()},
                            "logprobs": logprobs, "finish_reason": res.finish_reason})
        return JSONResponse({**base, "choices": choices, "usage": usage(plan.prompt_tokens, results)})
