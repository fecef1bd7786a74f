"""The hub as the main job: the Python client API the banner names, and the banner itself.

(``opensocket serve`` as a process is tested in tests/cli/test_serve.py.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import opensocket.chat
from opensocket.aio.chat_client import ChatClient as AsyncChatClient
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat.redis_backplane import parse_redis_url
from opensocket.cli.chat_serve import banner, banner_lines
from opensocket.sync.chat_client import ChatClient as BlockingChatClient

from .test_server import expect, login, websocket


def test_client_names_are_the_runtime_clients() -> None:
    assert opensocket.chat.Client is AsyncChatClient
    assert opensocket.chat.SyncClient is BlockingChatClient
    assert {"Client", "SyncClient"} <= set(opensocket.chat.__all__)
    assert {"Client", "SyncClient"} <= set(dir(opensocket.chat))


def test_importing_the_chat_package_starts_no_runtime() -> None:
    code = (
        "import sys, opensocket.chat\n"
        "names = ('opensocket.aio', 'opensocket.sync', 'asyncio')\n"
        "loaded = [m for m in names if m in sys.modules]\n"
        "print(loaded)\n"
        "opensocket.chat.Client\n"
        "print('opensocket.aio.chat_client' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["[]", "True"]


async def test_the_asyncio_and_blocking_clients_as_the_banner_names_them() -> None:
    async with await serve_chat(["tcp://127.0.0.1:0"], ["http://127.0.0.1:0"]) as srv:
        browser = await websocket(srv)
        await login(browser, "browser")
        bot = await opensocket.chat.Client.connect(srv.urls[0], nick="bot", rooms=["lobby"])
        await bot.say("lobby", "async hello")
        await expect(browser, "message", nick="bot", text="async hello")

        def blocking() -> None:
            with opensocket.chat.SyncClient.connect(
                srv.urls[0], nick="sync", rooms=["lobby"]
            ) as client:
                client.say("lobby", "blocking hello")

        await asyncio.to_thread(blocking)
        await expect(browser, "message", nick="sync", text="blocking hello")
        await bot.close()
        await browser.close()


async def test_banner_for_password_unix_and_backplane(sock_path: str) -> None:
    async with ChatServer() as srv:
        await srv.listen(f"unix://{sock_path}")
        info = banner(srv, parse_redis_url("redis://:secret@10.0.0.1:6379/2"), password=True)
        assert (
            info["terminal"]
            == f"opensocket chat unix://{sock_path} --nick NAME --room lobby --password PASSWORD"
        )
        assert 'password="PASSWORD"' in info["python"][1]
        assert info["backplane"] == "redis://:***@10.0.0.1:6379/2"
        assert info["page"] is None
        text = "\n".join(banner_lines(info))
        assert "in a browser" not in text  # no web port, no page to open
        assert "  sharing rooms through redis://:***@10.0.0.1:6379/2 as node local" in text
        assert "secret" not in text


def test_banner_for_tls_and_wildcard_listeners() -> None:
    class Fake:
        urls = ["tls://[::]:7443"]
        web_urls = ["unix:///run/chat-web.sock", "https://0.0.0.0:8443/"]

        class hub:  # stands in for the attribute
            node = "local"

    info = banner(Fake())  # type: ignore[arg-type]
    assert info["native"] == ["tls://[::]:7443"]  # where it listens, as bound
    assert info["terminal"] == "opensocket chat tls://127.0.0.1:7443 --nick NAME --room lobby"
    assert 'tls=opensocket.TLSOptions(ca_file="ca.pem")' in info["python"][1]
    assert info["page"] == "https://127.0.0.1:8443/"  # not the unix socket: a browser URL
    assert info["metrics"] == ["https://127.0.0.1:8443/metrics"]
    assert info["websocket"] == ["unix:///run/chat-web.sock (path /ws)", "wss://127.0.0.1:8443/ws"]
