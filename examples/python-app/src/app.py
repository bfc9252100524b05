"""A small ASGI application: no framework, just the protocol.

GET /        -> a greeting (from the GREETING variable of .env)
GET /healthz -> {"status": "ok", "revision": "<revision id>", "markupsafe": "compiled"}

markupsafe is the one dependency with compiled, platform-specific wheels: /healthz says whether its
C speedups loaded, which proves the wheel built for the instance's arch was installed.

The revision id is read once, at import, from the REVISION file deploy-hook writes at the release
root. The process's working directory is the physical release directory, so this never follows
`current` later.
"""

import json
import os
from pathlib import Path

from markupsafe import escape

try:
    from markupsafe import _speedups  # noqa: F401  (the compiled part of the wheel)

    MARKUPSAFE = "compiled"
except ImportError:
    MARKUPSAFE = "pure-python"

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
        body = json.dumps({"status": "ok", "revision": REVISION, "markupsafe": MARKUPSAFE}).encode()
        await _send(send, 200, body, b"application/json")
    elif path == "/":
        await _send(send, 200, f"{escape(GREETING)} ({REVISION})\n".encode(), b"text/plain")
    else:
        await _send(send, 404, b"not found\n", b"text/plain")
