"""The optional bearer token of `sepsis-rl serve` and the request-body limit, as ASGI middleware.

Token. With `--token-file`, every request under `/v1/` except `GET /v1/health` must carry
`Authorization: Bearer <token>`; anything else is answered 401 before the body is read. The page
(`/`, `/static/*`) and the API description (`/docs`, `/openapi.json`) stay open: they hold no
patient data and no model output, and the page asks for the token itself. Tokens are compared
in constant time (`hmac.compare_digest` of their SHA-256 digests, so the length does not leak
either).

Ray Serve pickles the FastAPI app, middleware included, when the deployment class is decorated,
before any token is known; so the token lives here, in this module's state, set by each replica's
constructor (`configure`) and read by the middleware at every request. One replica is one
process, so the state is the replica's.

Body limit. A body larger than `max_bytes` is answered 413 `{"detail": "request body exceeds N
bytes"}`: at once when its Content-Length says so, else as soon as the streamed bytes pass the
limit (the rest is never buffered).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

MIN_TOKEN_CHARS = 16
"""Shortest token accepted; `python -c 'import secrets; print(secrets.token_urlsafe(32))'`
gives 43 characters."""


OPEN_PATHS = frozenset({"/v1/health"})
"""Paths under `/v1/` that need no token."""


_expected_digest: bytes | None = None
"""SHA-256 of the token this replica requires; None: no token required."""


def read_token(path: str | Path) -> str:
    """The token in a token file (surrounding whitespace ignored).

    Raises ValueError saying what is wrong: unreadable, empty, too short, or not one line of
    printable ASCII (an HTTP header cannot carry anything else)."""
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ValueError(f"--token-file {path}: cannot read it ({reason})") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"--token-file {path}: the token has {len(token)} characters, fewer than "
            f"{MIN_TOKEN_CHARS}; write a random one, e.g. python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))' > {path}"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(
            f"--token-file {path}: the token must be one word of printable ASCII characters "
            "(it travels in an HTTP header)"
        )
    return token


def configure(token: str | None) -> None:
    """Require `token` on this process's `/v1/` requests from now on (None: require none)."""
    global _expected_digest
    _expected_digest = None if token is None else _digest(token.encode())


def token_required() -> bool:
    """Whether this process requires a token."""
    return _expected_digest is not None


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerToken:
    """ASGI middleware: 401 for a `/v1/` request without the configured token (see module
    docstring); a no-op while no token is configured."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or _expected_digest is None or not self._guarded(scope):
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(
            _digest(token.strip()), _expected_digest
        )
        if not ok:
            reason = "missing" if not given else "wrong"
            return await _send_json(
                send,
                401,
                f"{reason} token: this server requires the header Authorization: Bearer <token> "
                "on /v1/ requests (ask whoever started it for the token)",
                [(b"www-authenticate", b"Bearer")],
            )
        return await self.app(scope, receive, send)

    @staticmethod
    def _guarded(scope) -> bool:
        path = scope.get("path", "")
        # Serve mounts the app under its route prefix; the app's own path follows root_path.
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path.startswith("/v1/") and path not in OPEN_PATHS


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes` (see module docstring)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request body exceeds {self.max_bytes} bytes"
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, detail)
        seen = 0
        too_big = started = False

        async def limited_receive():
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    # The app sees the client leave and stops reading; the 413 is sent below.
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if too_big:
                return  # drop whatever the app answers to the pretended disconnect
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not too_big:
                raise
        if too_big and not started:
            await _send_json(send, 413, detail)
