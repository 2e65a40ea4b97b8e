"""Server-sent events for ``"stream": true``: one chunk per text delta (with its tokens' logprobs
when asked), a final chunk per choice, usage if asked, ``[DONE]``. The engine's events arrive on
its worker thread and are handed to the event loop; a client that goes away cancels the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from coh.generation.requests import Delta, EventCallback, GenRequest, Job
from coh.serve.answers import Plan, usage

# chunk(choice index, text (None: the chat role chunk), finish reason or None, the delta) -> JSON chunk
Chunk = Callable[[int, "str | None", "str | None", "Delta | None"], dict]


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream(submit: Callable[[list[GenRequest], EventCallback], Job], plan: Plan, chunk: Chunk,
           include_usage: bool, lstrip: bool) -> StreamingResponse:
    """Submit ``plan``'s requests (``submit(requests, on_event)``) and stream their answer.
    ``lstrip`` (chat): each choice starts with a role chunk and its text without leading space;
    else (completions) with its echoed prompt, if any."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    requests = plan.requests

    def on_event(event: str, index: int, payload: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens
            loop.call_soon_threadsafe(events.put_nowait, (event, index, payload))

    job = submit(requests, on_event)

    async def body() -> AsyncIterator[str]:
        try:
            started = [not lstrip] * len(requests)
            for i in range(len(requests)):
                if lstrip:  # chat: the first chunk names the role
                    yield sse(chunk(i, None, None, None))
                elif plan.echo is not None and plan.echo[i]:
                    yield sse(chunk(i, plan.echo[i], None, None))
            left, results = len(requests), [None] * len(requests)
            while left:
                event, i, payload = await events.get()
                if event == "delta":
                    text = payload.text
                    if not started[i]:
                        text = text.lstrip()
                        started[i] = bool(text)
                    if text or payload.token_ids:
                        yield sse(chunk(i, text, None, payload))
                elif event == "done":
                    results[i] = payload
                    left -= 1
                    yield sse(chunk(i, "", payload.finish_reason, None))
                else:
                    yield sse({"error": {"message": f"the model failed on this batch: {payload}",
                                         "type": "server_error", "param": None, "code": 500}})
                    return
            if include_usage:
                yield sse({**chunk(0, "", None, None), "choices": [], "usage": usage(plan.prompt_tokens, results)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # finished, or the client went away: nothing more to compute

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
