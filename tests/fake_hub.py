"""A local fake of the Hugging Face Hub's HTTP API, enough for ``HfApi.create_repo`` and
``HfApi.upload_folder``: a threaded HTTP server on 127.0.0.1 that records each repository created
and each file committed. ``preupload`` answers ``regular`` for every file, so the client sends the
contents base64-encoded in the commit itself (no LFS or Xet storage to fake).

Use ``fake_hub`` (a context manager): it points ``HF_ENDPOINT`` at the server and lifts the tests'
offline mode for the Hub client while it runs; ``fail_with=500`` makes every call fail."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock


@dataclass
class Hub:
    url: str = ""
    repos: dict[str, dict] = field(default_factory=dict)  # repo id -> {"private": bool, "files": {path: bytes}}
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, bearer token)
    fail_with: int | None = None
    validated: list[str] = field(default_factory=list)  # README.md contents sent to /api/validate-yaml


def _metadata_errors(readme: str) -> list[str]:
    """What the Hub refuses in a card's metadata, as far as the tests need: YAML that does not parse
    to a mapping, and a ``base_model`` that is not a repo id (a local path, say)."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    try:
        meta = ModelCard(readme).data.to_dict()
    except ValueError as e:
        return [f"invalid YAML: {e}"]
    bases = meta.get("base_model") or []
    errors = []
    for base in [bases] if isinstance(bases, str) else bases:
        try:
            validate_repo_id(base)
        except ValueError:
            errors.append(f'"base_model" must be a model id, got {base!r}')
    return errors


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            auth = self.headers.get("Authorization", "")
            hub.requests.append(("POST", self.path, auth.removeprefix("Bearer ") or None))
            if hub.fail_with:
                return self._send(hub.fail_with, {"error": "the fake hub is down"})
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                private = req.get("visibility") == "private" or bool(req.get("private"))
                hub.repos.setdefault(repo_id, {"private": private, "files": {}})
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            if path == "/api/validate-yaml":  # the Hub's metadata check of a README.md, before any upload
                errors = _metadata_errors(json.loads(body)["content"])
                hub.validated.append(json.loads(body)["content"])
                return self._send(400 if errors else 200, {"errors": [{"message": m} for m in errors], "warnings": []})
            if path.startswith("/api/models/") and "/preupload/" in path:
                files = json.loads(body)["files"]
                return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files]})
            if path.startswith("/api/models/") and "/commit/" in path:
                repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
                if repo_id not in hub.repos:
                    return self._send(404, {"error": f"Repository {repo_id} not found"})
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        hub.repos[repo_id]["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                oid = f"{len(hub.requests):040x}"
                return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})
            return self._send(404, {"error": f"the fake hub does not know POST {path}"})

        def do_GET(self):
            hub.requests.append(("GET", self.path, None))
            return self._send(404, {"error": f"the fake hub does not know GET {self.path}"})

    return Handler


@contextlib.contextmanager
def fake_hub(fail_with: int | None = None):
    """A running fake Hub; ``HF_ENDPOINT`` points at it, with a token in ``HF_TOKEN``."""
    from huggingface_hub import constants

    hub = Hub(fail_with=fail_with)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with mock.patch.dict("os.environ", {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_fake_token"}), \
                mock.patch.object(constants, "HF_HUB_OFFLINE", False):
            yield hub
    finally:
        server.shutdown()
        server.server_close()
