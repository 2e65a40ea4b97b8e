"""Request bodies and their validation: pydantic models of every route's JSON (OpenAI's
completions and chat, the tokenizer endpoints, the original EasyLM server's), strict (values are
never coerced: ``"4"`` is not a number), Unicode only (no lone surrogates), with the fields this
server does not implement refused by name (:func:`refuse_unknown`), and validation errors
described one line per field (:func:`describe_validation`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from coh.data.feedback import Turn

MAX_LOGPROBS = 20
MAX_N = 128
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # each stop string is matched against the text after every token
INT64 = 2**63
# What an unknown field may hold: nothing (null, false, empty). Anything else is refused by name.
NOTHING = (None, False, "", [], {})


class Body(BaseModel):
    # strict: "4" is not a number, 1 is not true. Unknown fields are kept so that the route can name
    # them in its refusal (see refuse_unknown); the schema says what is accepted.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False,
                              json_schema_extra={"additionalProperties": {"enum": list(NOTHING)}})


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(data: Any) -> str | None:
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


class RequestBody(Body):
    """A whole request body: its text must be Unicode. JSON allows ``"\\ud83d"`` alone, which
    is no character; tokenizers and the answer's own UTF-8 encoding fail on it."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        where = lone_surrogate(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate", "field '{field}' holds a lone UTF-16 surrogate (such as \\ud83d), which is not "
                "a character: send whole characters (a surrogate pair, or the character itself)", {"field": where})
        return data


NonNegative = Annotated[int, Field(ge=0)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)]


class StreamOptions(Body):
    include_usage: bool = False


class SamplingRequest(RequestBody):
    """The fields both OpenAI generation routes take."""

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


class CompletionRequest(SamplingRequest):
    prompt: str | list[NonNegative] | list[str] | list[list[NonNegative]]
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    add_special_tokens: bool = True  # vLLM's extra: for string prompts only; token ids are never changed
    return_tokens_as_token_ids: bool = False  # vLLM's extra: "token_id:N" instead of token text


class ContentPart(Body):
    type: str
    text: str | None = None


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(RequestBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    feedback: str | None = None
    return_token_strs: bool = False


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[NonNegative]


class OriginalRequest(RequestBody):
    """The original EasyLM server's body (its ``InferenceRequest``)."""

    prefix_text: list[str] | None = None
    text: list[str] | None = None
    until: list[StopString] | list[list[StopString]] | None = None
    temperature: float | None = Field(None, ge=0, le=100)


class OriginalChatRequest(RequestBody):
    """The original server's ``/chat`` body."""

    prompt: str
    context: str = ""
    temperature: float | None = Field(None, ge=0, le=100)
    feedback: str | None = None


class Refusal(ValueError):
    """A request refused as it is (answered 400 in OpenAI's shape, ``coh.serve.errors``);
    ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def refuse_unknown(model: BaseModel, path: str = "") -> None:
    """Refuse (``Refusal``) the first field the server does not implement. A field set to nothing
    (null, false, empty) asks for nothing and passes, so that clients echoing defaults still work."""
    for name, value in (model.model_extra or {}).items():
        if any(value == nothing and type(value) is type(nothing) for nothing in NOTHING):
            continue
        raise Refusal(f"'{path}{name}' is not supported by this server: leave it out (it would be ignored "
                      "otherwise)", f"{path}{name}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            refuse_unknown(value, f"{path}{name}.")
        elif isinstance(value, list):
            for k, item in enumerate(value):
                if isinstance(item, BaseModel):
                    refuse_unknown(item, f"{path}{name}[{k}].")


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def message_turns(messages: Sequence[Message]) -> list[Turn]:
    """OpenAI messages into turns; text content parts are joined, parts of other types refused."""
    turns = []
    for k, m in enumerate(messages):
        if isinstance(m.content, list):
            others = [p.type for p in m.content if p.type != "text"]
            if others:
                raise Refusal(f"messages[{k}].content: only text parts are supported, got {others[0]!r}",
                              f"messages[{k}].content")
            text = "".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        turns.append(Turn(CHAT_ROLES[m.role], text))
    if not turns:
        raise Refusal("messages must not be empty", "messages")
    return turns


# What each field that takes several shapes expects, for errors that would otherwise list every shape.
SHAPES = {"prompt": "a string, a list of strings, a list of token ids (integers >= 0) or a list of such lists",
          "stop": f"a string or a list of at most {MAX_STOPS} strings, each 1 to {MAX_STOP_CHARS} characters",
          "until": f"a list of stop strings (1 to {MAX_STOP_CHARS} characters) or a list of such lists",
          "content": "a string, a list of content parts ({\"type\": \"text\", \"text\": ...}) or null"}
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|nullable)$|\[|^function-|^constrained-")


def describe_validation(errors: Sequence[dict]) -> tuple[str, str | None]:
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
