"""The original Chain-of-Hindsight code's server endpoints (EasyLM's ``LMServer``), same JSON:
``/loglikelihood``, ``/loglikelihood-rolling``, ``/generate``, ``/greedy-until`` and ``/chat``
(``/ready`` is an open route of ``coh.serve.app``). They run on the same engine as the OpenAI
routes, with the same rules: EOS ends a text without its text, as EasyLM cut its output there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request

from coh.data.records import Segment, separator
from coh.generation.requests import GenRequest
from coh.serve.answers import finite
from coh.serve.errors import ServeError
from coh.serve.schemas import MAX_STOPS, OriginalChatRequest, OriginalRequest, refuse_unknown

if TYPE_CHECKING:
    from coh.serve.app import Server


class OriginalRoutes:
    """The original server's routes of one ``Server``."""

    def __init__(self, server: Server):
        self.server = server

    def add_routes(self, router: APIRouter) -> None:
        router.add_api_route("/loglikelihood", self.loglikelihood, methods=["POST"])
        router.add_api_route("/loglikelihood-rolling", self.loglikelihood_rolling, methods=["POST"])
        router.add_api_route("/generate", self.generate, methods=["POST"])
        router.add_api_route("/greedy-until", self.greedy_until, methods=["POST"])
        router.add_api_route("/chat", self.chat, methods=["POST"])

    def _prefix_ids(self, text: str) -> list[int]:
        """A context's ids with the tokenizer's own BOS; an empty one is BOS (or EOS when there is no BOS)."""
        tokenizer = self.server.tokenizer
        ids = tokenizer(text)["input_ids"] if text else []
        if not ids:
            first = tokenizer.bos_token_id
            ids = [first if first is not None else self.server.engine.eos_ids[0]]
        return ids

    def _plain_ids(self, text: str) -> list[int]:
        return self.server.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _check_texts(self, texts: Sequence[str] | None, param: str) -> None:
        for text in texts or []:
            self.server.check_chars(text, param)

    async def loglikelihood(self, data: OriginalRequest, request: Request):
        """Sum of logprobs of each ``text`` after its ``prefix_text``, and whether it is the greedy choice."""
        refuse_unknown(data)
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of continuations)", "text")
        prefixes = data.prefix_text if data.prefix_text is not None else [""] * len(data.text)
        if len(prefixes) != len(data.text):
            raise ServeError(400, f"prefix_text has {len(prefixes)} items but text has {len(data.text)}", "text")

        def plan() -> tuple[list[GenRequest], list[int]]:
            self._check_texts(prefixes, "prefix_text")
            self._check_texts(data.text, "text")
            requests, spans = [], []
            for prefix, text in zip(prefixes, data.text):
                ctx, cont = self._prefix_ids(prefix), self._plain_ids(text)
                self.server.check_length(ctx + cont, 0, "text")
                requests.append(GenRequest(ctx + cont, prompt_logprobs=1))
                spans.append(len(ctx))
            return requests, spans

        requests, spans = await self.server.off_loop(plan)
        results = await self.server.run(requests, request)
        ll, greedy = [], []
        for res, start in zip(results, spans):
            entries = [e for e in (res.prompt_logprobs or [])[start:] if e is not None]
            ll.append(sum(e[1] for e in entries))
            greedy.append(all(e[2] and e[2][0][0] == e[0] for e in entries))
        return {"prefix_text": data.prefix_text, "text": data.text, "log_likelihood": [finite(v) for v in ll],
                "is_greedy": greedy}

    async def loglikelihood_rolling(self, data: OriginalRequest, request: Request):
        """Logprob of each whole ``text`` (after BOS, or EOS for models without one), in windows of the
        model's context where it is longer."""
        refuse_unknown(data)
        if data.text is None:
            raise ServeError(400, "give 'text' (a list of strings)", "text")
        limit = self.server.engine.max_model_len

        def plan() -> tuple[list[GenRequest], list[tuple[int, int]]]:
            requests, owners = [], []
            for k, text in enumerate(data.text):
                ids = self._prefix_ids("")[:1] + self._plain_ids(text)
                pos = 1
                while pos < len(ids):  # each window scores ids[pos:end] with as much context as fits
                    end = min(len(ids), pos + limit - 1)
                    start = max(0, end - limit)
                    requests.append(GenRequest(ids[start:end], prompt_logprobs=1))
                    owners.append((k, pos - start))
                    pos = end
            return requests, owners

        requests, owners = await self.server.off_loop(plan)
        results = await self.server.run(requests, request)
        ll, greedy = [0.0] * len(data.text), [True] * len(data.text)
        for res, (k, first) in zip(results, owners):
            entries = [e for e in (res.prompt_logprobs or [])[first:] if e is not None]
            ll[k] += sum(e[1] for e in entries)
            greedy[k] = greedy[k] and all(e[2] and e[2][0][0] == e[0] for e in entries)
        return {"text": data.text, "log_likelihood": [finite(v) for v in ll], "is_greedy": greedy}

    def _reply_length(self, ids: Sequence[int]) -> int:
        """The server's reply length, capped by what the context leaves."""
        return min(self.server.max_new_tokens, self.server.engine.max_model_len - len(ids))

    def _generations(self, prefixes: list[str], temperature: float, stops: list[tuple[str, ...]]) -> list[GenRequest]:
        self._check_texts(prefixes, "prefix_text")
        requests = []
        for prefix, stop in zip(prefixes, stops):
            ids = self._prefix_ids(prefix)
            self.server.check_length(ids, 1, "prefix_text")
            requests.append(GenRequest(ids, self._reply_length(ids), temperature=temperature, stop=stop))
        return requests

    async def generate(self, data: OriginalRequest, request: Request):
        refuse_unknown(data)
        if data.prefix_text is None:
            raise ServeError(400, "give 'prefix_text' (a list of prompts)", "prefix_text")
        temperature = 1.0 if data.temperature is None else data.temperature  # the original's default
        requests = await self.server.off_loop(self._generations, data.prefix_text, temperature,
                                              [()] * len(data.prefix_text))
        results = await self.server.run(requests, request)
        return {"prefix_text": data.prefix_text, "output_text": [r.text for r in results], "temperature": temperature}

    async def greedy_until(self, data: OriginalRequest, request: Request):
        refuse_unknown(data)
        if data.prefix_text is None or data.until is None:
            raise ServeError(400, "give 'prefix_text' and 'until' (one stop string or list per prompt)", "until")
        if len(data.until) != len(data.prefix_text):
            raise ServeError(400, f"until has {len(data.until)} items but prefix_text has {len(data.prefix_text)}",
                             "until")
        stops = [(u,) if isinstance(u, str) else tuple(u) for u in data.until]
        if any(len(s) > MAX_STOPS for s in stops):
            raise ServeError(400, f"at most {MAX_STOPS} stop strings per prompt", "until")
        requests = await self.server.off_loop(self._generations, data.prefix_text, 0.0, stops)
        results = await self.server.run(requests, request)
        return {"prefix_text": data.prefix_text, "until": data.until, "max_length": self.server.max_new_tokens,
                "output_text": [r.text for r in results]}

    async def chat(self, data: OriginalChatRequest, request: Request):
        """The original's text chat: ``context`` is the conversation so far as text; the turn is added
        in the CoH format (``User: ... A helpful answer:``) and the new context comes back."""
        refuse_unknown(data)
        server = self.server
        temperature = 1.0 if data.temperature is None else data.temperature
        phrases, eos = server.prompter.phrases, server.tokenizer.eos_token or ""
        phrase = server.prompter.phrase(data.feedback)
        turn = f"{phrases.user} {data.prompt}" + (f" {phrase}" if phrase else "")
        # As training renders context (coh.data.records.separator): the context as one segment.
        joiner = separator(Segment(data.context, eos=bool(eos) and data.context.endswith(eos)) if data.context else None)
        context = data.context + joiner + turn

        def plan() -> GenRequest:
            server.check_chars(context, "context")
            ids = self._prefix_ids(context)
            server.check_length(ids, 1, "context")
            return GenRequest(ids, self._reply_length(ids), temperature=temperature, stop=(phrases.user,))

        (res,) = await server.run([await server.off_loop(plan)], request)
        response = res.text.strip()
        return {"response": response, "context": f"{context} {response}{eos}", "temperature": temperature}
