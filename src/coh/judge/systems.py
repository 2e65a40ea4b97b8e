"""The systems under comparison, and the OpenAI-compatible client that asks them.

A system is an OpenAI-compatible server (``coh serve``, vLLM, ...: ``POST {url}/chat/completions``)
or a prepared file of outputs, given as a spec string (``coh judge prepare --system``; the grammar
is ``coh.judge.config.SYSTEM_SPEC_HELP``, parsed only by ``SystemSpec.parse``). Two phrases of
one CoH model are two systems on the same server with different ``feedback`` (the body field
``coh serve`` reads: ``good``, ``bad``, ``none`` or any phrase text).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coh.data.errors import describe

if TYPE_CHECKING:
    from coh.judge.sources import Prompt

SYSTEM_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")  # also the keys of a comparisons row's outputs


@dataclass
class SystemSpec:
    """One system under comparison: ``url`` of an OpenAI-compatible API (the part before
    ``/chat/completions``, e.g. ``http://127.0.0.1:8000/v1``) with an optional ``model`` (default:
    the server's first), ``feedback`` (sent as the body field of that name) and ``api_key_env``
    (the environment variable holding the key); or ``file``, prepared outputs."""

    name: str
    url: str | None = None
    file: str | None = None
    model: str | None = None
    feedback: str | None = None
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if not SYSTEM_NAME.match(self.name):
            raise ValueError(f"system name {self.name!r}: use 1-64 letters, digits and _ . + -")
        if (self.url is None) == (self.file is None):
            raise ValueError(f"system '{self.name}': give exactly one of url=URL or file=PATH")
        if self.file is not None and (self.model or self.feedback or self.api_key_env):
            raise ValueError(f"system '{self.name}': model, feedback and api_key_env apply to url= systems only")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"system '{self.name}': url={self.url}: expected an http:// or https:// URL such as "
                             "http://127.0.0.1:8000/v1")
        if self.file == "":
            raise ValueError(f"system '{self.name}': file= names no file")
        if self.feedback is not None and not self.feedback.strip():
            raise ValueError(f"system '{self.name}': feedback= is blank; give good, bad, none or a phrase")

    @staticmethod
    def parse(text: str) -> SystemSpec:
        """``NAME:url=URL[,model=M][,feedback=F][,api_key_env=VAR]`` or ``NAME:file=PATH`` (the
        one parser of the spec that ``coh.judge.config.SYSTEM_SPEC_HELP`` describes)."""
        name, sep, rest = text.partition(":")
        if not sep:
            raise ValueError(f"system '{text}': expected NAME:url=URL[,model=..,feedback=..] or NAME:file=PATH")
        opts: dict[str, str] = {}
        keys = ("url", "file", "model", "feedback", "api_key_env")
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in keys:
                raise ValueError(f"system '{text}': unknown option '{part}'; expected {', '.join(k + '=' for k in keys)}")
            opts[key] = value
        return SystemSpec(name.strip(), **opts)

    def describe(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None and k not in ("name", "api_key_env")}


@dataclass(frozen=True)
class Generation:
    """Sampling settings sent with every request."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    timeout_s: float = 300.0
    concurrency: int = 4


def _headers(system: SystemSpec) -> dict[str, str]:
    if not system.api_key_env:
        return {}
    key = os.environ.get(system.api_key_env)
    if not key:
        raise ValueError(f"system '{system.name}': environment variable {system.api_key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


def _error(system: SystemSpec, what: str, response) -> ValueError:
    body = response.text[:300].replace("\n", " ")
    return ValueError(f"system '{system.name}': {what} {response.request.url} answered HTTP {response.status_code}: {body}")


def unreachable(system: SystemSpec, url: str, error: Exception) -> ValueError:
    """A request that got no answer at all, said in words: which system, which URL, and why."""
    import httpx

    why = {httpx.ConnectError: "nothing answers there (is the server running, on that port?)",
           httpx.TimeoutException: "no answer in time (--timeout)", httpx.UnsupportedProtocol:
           "not an http:// or https:// URL", httpx.InvalidURL: "not a valid URL"}
    reason = next((text for error_type, text in why.items() if isinstance(error, error_type)), type(error).__name__)
    return ValueError(f"system '{system.name}': {url}: {reason} ({error})")


def served_model(client, system: SystemSpec) -> str:
    """``model`` of the spec, else the first model the server lists at ``GET {url}/models``."""
    import httpx

    if system.model:
        return system.model
    url = f"{system.url.rstrip('/')}/models"
    try:
        r = client.get(url, headers=_headers(system))
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise unreachable(system, url, e) from None
    if r.status_code != 200:
        raise _error(system, "model list (give model=NAME to skip it):", r)
    try:
        data = r.json().get("data") or []
        model = data[0]["id"]
    except (ValueError, AttributeError, LookupError, TypeError):
        raise ValueError(f"system '{system.name}': {url} lists no model ({r.text[:200]!r}); give model=NAME") from None
    if not isinstance(model, str) or not model:
        raise ValueError(f"system '{system.name}': {url} lists a model without a name; give model=NAME")
    return model


def generate(system: SystemSpec, prompts: list[Prompt], gen: Generation, progress=None) -> tuple[list[str], int]:
    """Each prompt's reply from an OpenAI-compatible server, in prompt order, ``gen.concurrency``
    requests at a time. Returns the replies and how many stopped at ``max_tokens``."""
    import httpx

    url = f"{system.url.rstrip('/')}/chat/completions"
    headers = _headers(system)
    # retries: connection failures only (a request that reached the model is not repeated)
    with httpx.Client(timeout=gen.timeout_s, transport=httpx.HTTPTransport(retries=2)) as client:
        model = served_model(client, system)

        def one(prompt: Prompt) -> tuple[str, bool]:
            body = {"model": model, "messages": prompt.messages, "max_tokens": gen.max_tokens,
                    "temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed}
            if system.feedback is not None:
                body["feedback"] = system.feedback
            try:
                r = client.post(url, json=body, headers=headers)
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                raise unreachable(system, url, e) from None
            if r.status_code != 200:
                raise _error(system, f"prompt '{prompt.id}':", r)
            try:
                choice = r.json()["choices"][0]
                text = choice["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise ValueError(f"system '{system.name}': prompt '{prompt.id}': not a chat completion: "
                                 f"{r.text[:300]}") from None
            if not isinstance(text, str):
                raise ValueError(f"system '{system.name}': prompt '{prompt.id}': message.content is {describe(text)}")
            if progress is not None:
                progress.update(1)
            return text.strip(), choice.get("finish_reason") == "length"

        with ThreadPoolExecutor(gen.concurrency) as pool:
            # Executor.map cancels the queued requests when one raises: the first failure stops the run
            results = list(pool.map(one, prompts))
    return [t for t, _ in results], sum(cut for _, cut in results)
