"""The chat page in a real browser (Debian's chromium driven by Playwright) against a real hub.

The hub runs in a thread with its own event loop, so the tests use Playwright's sync API.
Screenshots go to ``$OPENSOCKET_ARTIFACTS`` (default: ``<pytest basetemp>/artifacts``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat import web

WAIT = 10.0  # seconds for any one expectation
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


class Hub:
    """A chat hub on loopback, run by an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hub", daemon=True)
        self.thread.start()
        self.server: ChatServer | None = None

    def start(self, web_port: int = 0) -> None:
        self.server = self._call(
            serve_chat(["tcp://127.0.0.1:0"], [f"http://127.0.0.1:{web_port}"])
        )

    def stop(self) -> None:
        if self.server is not None:
            self._call(self.server.close())
            self.server = None

    def shutdown(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    @property
    def native(self) -> str:
        assert self.server is not None
        return self.server.urls[0]

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.web_urls[0]

    @property
    def web_port(self) -> int:
        assert self.server is not None
        return self.server.web_addresses[0].port

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)


class Plain:
    """``opensocket chat --plain`` as a subprocess: lines in through a pipe, lines out."""

    def __init__(self, url: str, nick: str, room: str) -> None:
        argv = [sys.executable, "-m", "opensocket", "chat", url, "--nick", nick, "--room", room]
        self.proc = subprocess.Popen(
            [*argv, "--plain", "--no-reconnect"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, name=f"plain-{nick}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        except (ValueError, OSError):
            pass  # closed under us at teardown: the stream has ended
        self.lines.put(None)

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text: str) -> str:
        """The next printed line containing ``text`` (bounded by WAIT)."""
        for _ in range(500):
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; got {self.seen[-20:]}")

    def close(self) -> int:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            return self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


class Peer:
    """A WebSocket chat user written by hand (no browser): the other side of a page."""

    def __init__(self, hub: Hub, nick: str, room: str | None = "lobby") -> None:
        self.stack = contextlib.ExitStack()  # websockets wants connect() as a context manager
        url = hub.url.replace("http://", "ws://") + "ws"
        self.ws: ClientConnection = self.stack.enter_context(ws_connect(url))
        self.who: list[str] = []
        self.send({"type": "hello", "nick": nick})
        self.expect("welcome")
        if room is not None:
            self.send({"type": "join", "room": room})
            self.who = self.expect("who")["nicks"]

    def send(self, command: dict[str, Any]) -> None:
        self.ws.send(json.dumps(command))

    def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        seen = []
        for _ in range(200):
            event: dict[str, Any] = json.loads(self.ws.recv(timeout=WAIT))
            if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event
            seen.append(event)
        raise AssertionError(f"no {kind} {fields} in {seen}")

    def close(self) -> None:
        self.stack.close()


# ---- fixtures -------------------------------------------------------------------------------


def chromium() -> str:
    path = os.environ.get("OPENSOCKET_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found: apt-get install chromium, or set OPENSOCKET_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("OPENSOCKET_ARTIFACTS")
    path = Path(base) if base else tmp_path_factory.getbasetemp() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    print(f"chat page screenshots in {path}")
    return path


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub()
    hub.start()
    yield hub
    hub.shutdown()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    """Opens pages in fresh contexts; afterwards checks no page logged an error."""
    contexts: list[BrowserContext] = []
    problems: list[str] = []

    def opener(width: int = 1280, height: int = 800, dark: bool = False) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=2 if width < 700 else 1,
            color_scheme="dark" if dark else "light",
        )
        context.set_default_timeout(WAIT * 1000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        return page

    expect.set_options(timeout=WAIT * 1000)
    yield opener
    for context in contexts:
        context.close()
    # the reconnect test makes the browser log failed WebSocket attempts: that is expected
    assert [p for p in problems if "WebSocket connection" not in p] == []


def login(page: Page, hub: Hub, nick: str, room: str = "lobby") -> None:
    page.goto(hub.url)
    page.fill("#nick-input", nick)
    page.fill("#room-input", room)
    page.click("#connect-button")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator(f'#my-rooms li[data-room="{room}"]')).to_be_visible()
    expect(page.locator("#room-title")).to_have_text(f"#{room}")


def say(page: Page, text: str) -> None:
    page.fill("#send-input", text)
    page.press("#send-input", "Enter")
    expect(page.locator("#send-input")).to_have_value("")


def log(page: Page, room: str = "lobby") -> Any:
    return page.locator(f'#messages .log[data-room="{room}"]')


def members(page: Page) -> Any:
    return page.locator("#members li")


# ---- tests ----------------------------------------------------------------------------------


def test_page_is_served_with_a_matching_script_hash(hub: Hub) -> None:
    with urllib.request.urlopen(hub.url, timeout=WAIT) as response:
        body = response.read()
        assert response.headers["content-type"].startswith("text/html")
    assert body == web.page()
    text = body.decode()
    # the CSP allows exactly the page's one inline script: editing it means a new hash
    script = text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in text, f"update the CSP hash to sha256-{digest}"
    assert text.count("<script") == 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "external resource"


def test_two_browsers_and_a_terminal_client_chat(hub: Hub, open_page: Any, artifacts: Path) -> None:
    alice, bob = open_page(), open_page(dark=True)
    login(alice, hub, "alice")
    login(bob, hub, "bob")
    carol = Plain(hub.native, "carol", "lobby")
    try:
        carol.expect("* connected")
        for page in (alice, bob):
            expect(members(page)).to_have_count(3)
            assert members(page).evaluate_all("els => els.map(e => e.dataset.nick)") == [
                "alice",
                "bob",
                "carol",
            ]
        expect(log(alice).locator(".line.join")).to_contain_text(["bob joined", "carol joined"])

        say(alice, "hello from alice")
        expect(log(bob).locator(".line.message").last).to_contain_text("alice hello from alice")
        carol.expect("[lobby] <alice> hello from alice")

        carol.write("hi from the terminal")
        for page in (alice, bob):
            expect(log(page).locator(".line.message").last).to_contain_text(
                "carol hi from the terminal"
            )

        say(bob, "/me waves")
        expect(log(alice).locator(".line.action").last).to_contain_text("bob waves")
        carol.expect("[lobby] * bob waves")

        say(bob, "/msg alice psst, just you")
        expect(alice.locator(".line.private").last).to_contain_text("bob psst, just you")
        carol.write("/msg bob a secret from the terminal")
        expect(bob.locator(".line.private").last).to_contain_text("carol a secret from the")

        say(alice, "/topic Welcome to the lobby")
        expect(bob.locator("#topic")).to_have_text("Welcome to the lobby")
        carol.expect("topic: Welcome to the lobby")
        alice.screenshot(path=artifacts / "chat-desktop.png")
        bob.screenshot(path=artifacts / "chat-desktop-dark.png")

        carol.write("/quit done for today")
        assert carol.close() == 0
        expect(members(alice)).to_have_count(2)
        expect(log(bob).locator(".line.leave").last).to_contain_text("carol quit (done for today)")
    finally:
        carol.close()


def test_phone_sized_screen(hub: Hub, open_page: Any, artifacts: Path) -> None:
    peer = Peer(hub, "dave")
    phone = open_page(390, 844)
    try:
        login(phone, hub, "erin")
        rooms_pane, members_pane = phone.locator("#side"), phone.locator("#members-pane")
        expect(rooms_pane).not_to_be_in_viewport()
        expect(members_pane).not_to_be_in_viewport()
        box = phone.locator("#send-input").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert box["y"] + box["height"] <= 844

        peer.send({"type": "say", "room": "lobby", "text": "welcome, erin! " + "long line " * 12})
        expect(log(phone).locator(".line.message").last).to_be_in_viewport()
        say(phone, "thanks, typed on a phone")
        assert peer.expect("message", nick="erin")["text"] == "thanks, typed on a phone"
        expect(log(phone).locator(".line.message").last).to_be_in_viewport()
        phone.screenshot(path=artifacts / "chat-phone.png")

        phone.click("#toggle-members")
        expect(members_pane).to_be_in_viewport(ratio=1)  # the drawer has slid in
        expect(members(phone)).to_have_count(2)
        phone.screenshot(path=artifacts / "chat-phone-members.png")
        phone.mouse.click(30, 400)  # the scrim outside the drawer closes it
        expect(members_pane).not_to_be_in_viewport()

        phone.click("#toggle-rooms")
        expect(rooms_pane).to_be_in_viewport()
        phone.fill("#join-input", "random")
        phone.press("#join-input", "Enter")
        expect(phone.locator("#room-title")).to_have_text("#random")
        expect(rooms_pane).not_to_be_in_viewport()
    finally:
        peer.close()


def test_hostile_text_is_shown_as_text(hub: Hub, open_page: Any) -> None:
    peer = Peer(hub, "mallory")
    page = open_page()
    try:
        peer.send({"type": "say", "room": "lobby", "text": "before: " + HOSTILE})
        peer.expect("message", nick="mallory")
        login(page, hub, "frank")  # the line above comes back as history
        expect(log(page).locator(".line.history .text")).to_have_text(["before: " + HOSTILE])
        rows = log(page).evaluate("l => [...l.children].map(n => n.className)")
        assert rows.index("line message history") < rows.index("line join"), rows  # time reads down
        peer.send({"type": "say", "room": "lobby", "text": HOSTILE})
        peer.send({"type": "topic", "room": "lobby", "topic": "<b>bold</b><img src=x>"})
        peer.send({"type": "msg", "to": "frank", "text": HOSTILE})
        expect(log(page).locator(".line.message .text").last).to_have_text(HOSTILE)
        expect(page.locator("#topic")).to_have_text("<b>bold</b><img src=x>")
        expect(page.locator(".line.private .text").last).to_have_text(HOSTILE)
        assert page.locator("#app img, #app script, #app b").count() == 0
        assert page.evaluate("window.__pwned") is None
    finally:
        peer.close()


def test_taken_nick_is_refused_on_the_form(hub: Hub, open_page: Any, artifacts: Path) -> None:
    peer = Peer(hub, "grace", room=None)
    page = open_page()
    try:
        page.goto(hub.url)
        page.fill("#nick-input", "Grace")
        page.click("#connect-button")
        expect(page.locator("#login-error")).to_contain_text("already in use")
        expect(page.locator("#connect-button")).to_be_enabled()
        page.screenshot(path=artifacts / "chat-login.png")
        page.fill("#nick-input", "grace2")
        page.click("#connect-button")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
    finally:
        peer.close()


def test_page_reconnects_and_rejoins(hub: Hub, open_page: Any) -> None:
    page = open_page()
    login(page, hub, "heidi")
    say(page, "/join second")
    expect(page.locator("#my-rooms li")).to_have_count(2)
    port = hub.web_port
    hub.stop()
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")
    hub.start(port)
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    peer = Peer(hub, "ivan")
    try:
        if "heidi" not in peer.who:  # the page rejoins just after its welcome
            peer.expect("joined", room="lobby", nick="heidi")
        peer.send({"type": "say", "room": "lobby", "text": "while you looked at #second"})
        lobby = page.locator('#my-rooms li[data-room="lobby"]')
        expect(lobby.locator(".badge")).to_have_text("1")  # unread
        lobby.click()
        expect(lobby.locator(".badge")).to_have_count(0)
        expect(log(page).locator(".line.message").last).to_contain_text("while you looked")
        expect(members(page)).to_have_count(2)
        say(page, "back again")
        assert peer.expect("message", nick="heidi")["text"] == "back again"
        peer.send({"type": "who", "room": "second"})
        assert peer.expect("who", room="second")["nicks"] == ["heidi"]
    finally:
        peer.close()
