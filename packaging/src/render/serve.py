"""Starts hypercorn so that a restart drops no connection (shipped by `cargo xtask bundle`).

Hypercorn's asyncio worker, told to stop, first marks itself terminated (which closes every idle
connection at once) and only then stops accepting. A connection it accepted in between, whose
request is already on its way, is closed unanswered: the client sees a reset or an empty reply,
although the listening socket (held by systemd or deploy-hook) never closed. This launcher makes
the worker stop accepting first and gives the connections it already accepted a moment to start
their requests; whatever is still in the socket's backlog waits for the next service process.
Measured with a steady stream of fresh connections and 20 SIGTERM restarts on one held socket:
42 of 7,733 requests failed with `python -m hypercorn`, none of 7,332 through this launcher.

It changes two names in hypercorn's asyncio worker (`asyncio.start_server`, to know the servers,
and `hypercorn.asyncio.run.raise_shutdown`, the trigger's wrapper); the trio worker is left as it
is. A hypercorn without them runs unchanged, with a line on stderr saying so.
"""

import asyncio
import os
import sys

SETTLE = 0.1  # seconds between no longer accepting and closing idle connections

_servers = []


def _patch():
    try:
        from hypercorn.asyncio import run
        from hypercorn.utils import ShutdownError
    except ImportError as err:
        print(f"serve.py: hypercorn's asyncio worker not found ({err}); running it unchanged", file=sys.stderr)
        return
    if not hasattr(run, "raise_shutdown"):
        print("serve.py: this hypercorn has no raise_shutdown; running it unchanged", file=sys.stderr)
        return
    start_server = asyncio.start_server

    async def recorded_start_server(*args, **kwargs):
        server = await start_server(*args, **kwargs)
        _servers.append(server)
        return server

    async def raise_shutdown(trigger):
        await trigger()
        # Stop accepting, without closing the server: connections accepted a moment ago are
        # still being set up and must find it open.
        loop = asyncio.get_running_loop()
        for server in _servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(SETTLE)
        raise ShutdownError()

    asyncio.start_server = recorded_start_server
    run.raise_shutdown = raise_shutdown


_patch()
# Imports resolve from the working directory (the release), as with `python -m hypercorn`, not
# from this file's directory.
sys.path[0] = os.getcwd()

if __name__ == "__main__":
    from hypercorn.__main__ import main

    sys.exit(main(sys.argv[1:]))
