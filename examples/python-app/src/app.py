"""A small ASGI application: no framework, just the protocol.

GET /        -> a greeting (from the GREETING variable of .env)
GET /healthz -> {"status": "ok", "revision": "<revision id>"}

The revision id is read once, at import, from the REVISION file deploy-hook writes at the release
root. The process's working directory is the physical release directory, so this never follows
`current` later.
"""

import json
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
try:
    REVISION = (_HERE / "REVISION").read_text().strip()
except OSError:
    REVISION = "unknown"
GREETING = os.environ.get("GREETING", "hello")


async def _send(send, status, body, content_type):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if scope["method"] not in ("GET", "HEAD"):
        await _send(send, 405, b"method not allowed\n", b"text/plain")
    elif path == "/healthz":
        body = json.dumps({"status": "ok", "revision": REVISION}).encode()
        await _send(send, 200, body, b"application/json")
    elif path == "/":
        await _send(send, 200, f"{GREETING} ({REVISION})\n".encode(), b"text/plain")
    else:
        await _send(send, 404, b"not found\n", b"text/plain")
