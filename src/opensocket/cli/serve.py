"""``opensocket serve``: the main job, the chat hub on loopback.

The same hub, options and defaults as ``opensocket chat serve`` (cli/chat_serve.py); its start
banner says how to join: the page in a browser, the terminal client, a Python bot. The framed
echo service that ``serve`` used to run is ``opensocket echo serve``.
"""

from __future__ import annotations

import argparse
from typing import Final

from .chat_serve import DEFAULT_LISTEN, DEFAULT_WEB
from .chat_serve import configure as configure_hub
from .chat_serve import execute as execute_hub

__all__ = ["HELP", "NAME", "configure", "execute"]

NAME: Final = "serve"
HELP: Final = "run the chat hub: browsers and terminals in the same rooms (loopback by default)"

_EPILOG: Final = f"""\
starts the chat hub: native clients on {DEFAULT_LISTEN}, the browser page, WebSocket and
metrics on {DEFAULT_WEB} (unless --listen/--web say otherwise), prints how to join, and runs
until Ctrl-C or SIGTERM (exit code 0 after a clean shutdown). Same options as 'opensocket chat
serve'; the framed echo service is 'opensocket echo serve'.

examples:
  opensocket serve                                   # then open {DEFAULT_WEB}/
  opensocket serve --listen tcp://127.0.0.1:0 --web http://127.0.0.1:0 --json
  opensocket serve --listen 'tcp://*:7070' --web 'http://*:8070' --allow 10.0.0.0/8
  opensocket serve --password-file chat.pass --operator-token-env CHAT_OP_TOKEN
  opensocket serve --reuse-port --backplane redis://127.0.0.1:6379/0   # run it N times
  opensocket cert                                    # makes certs/ for the next line
  opensocket serve --listen tls://127.0.0.1:7443 --web https://127.0.0.1:8443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem

Exit status: 0 stopped by Ctrl-C or SIGTERM, 1 failed (address in use, TLS files), 2 bad options.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``serve``: those of ``chat serve``."""
    parser.epilog = _EPILOG
    configure_hub(parser, NAME)


def execute(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT/SIGTERM."""
    return execute_hub(args)
