"""The browser tool against a local stand-in for Exa's paid HTTP API that also serves real HTML pages.

`ExaDouble` answers `/search` and `/contents` the way Exa does (x-api-key header, `results`
list); everything else (fetching, HTML rendering, cursors, find, citations) is the real code.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from oss_serve.tools.base import ToolResult
from oss_serve.tools.browser_backends import ExaBackend, choose_search_backend
from oss_serve.tools.browser_tool import BrowserSession, BrowserToolServer

API_KEY = "test-key"

OTTERS_HTML = """<!doctype html><html><head><title>Sea otters</title></head><body>
<h1>Sea otters</h1>
<p>Sea otters live in <a href="/pages/kelp.html">kelp forests</a> along the Pacific coast.</p>
<p>They eat sea urchins, crabs and clams, and use rocks as tools.</p>
<p>See also <a href="https://example.org/otters">the encyclopedia</a>.</p>
<ul><li>Length: about 1.2 m</li><li>Weight: up to 45 kg</li></ul>
<script>document.write("never shown")</script>
</body></html>"""

KELP_HTML = ("<html><head><title>Kelp forests</title></head>"
             "<body><p>Kelp grows fast where urchins are few.</p></body></html>")

LONG_HTML = ("<html><head><title>Long page</title></head><body>"
             + "".join(f"<p>Paragraph {i}: " + "words " * 30 + "</p>" for i in range(200)) + "</body></html>")


class ExaDouble(BaseHTTPRequestHandler):
    """Stands in for api.exa.ai (paid, not reachable here) and for the web sites it finds."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        pages = {"/pages/otters.html": OTTERS_HTML, "/pages/kelp.html": KELP_HTML, "/pages/long.html": LONG_HTML}
        if self.path in pages:
            self._send(200, pages[self.path])
        elif self.path == "/redirect":
            self._send(302, "", headers={"location": "/pages/kelp.html"})
        elif self.path == "/pages/notes.txt":
            self._send(200, "plain notes\nline two", "text/plain")
        else:
            self._send(403, "forbidden")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.headers.get("x-api-key") != API_KEY:
            self._send(401, json.dumps({"error": "bad key"}), "application/json")
            return
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/search":
            self.server.requests.append(body)  # type: ignore[attr-defined]
            results = [
                {"id": "1", "url": f"{base}/pages/otters.html", "title": "Sea otters",
                 "summary": "Sea otters are marine mammals that use tools.", "text": "Sea otters text from Exa."},
                {"id": "2", "url": f"{base}/members-only", "title": "Otter club",
                 "summary": "A page that refuses direct fetches.", "text": None},
            ][: body["numResults"]]
            self._send(200, json.dumps({"results": results, "requestId": "r1"}), "application/json")
        elif self.path == "/contents":
            results = [{"url": url, "title": "Otter club", "text": "Members only text served by Exa contents."}
                       for url in body["urls"] if url.endswith("/members-only")]
            self._send(200, json.dumps({"results": results}), "application/json")
        else:
            self._send(404, "{}", "application/json")


@pytest.fixture(scope="module")
def exa_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ExaDouble)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def exa_double(exa_server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{exa_server.server_address[1]}"


@pytest.fixture
def exa_requests(exa_server: ThreadingHTTPServer) -> list[dict]:
    return exa_server.requests  # type: ignore[attr-defined]


def make_session(base_url: str, *, allow_private: bool = True, api_key: str = API_KEY) -> BrowserSession:
    tool = BrowserToolServer(ExaBackend(api_key, base_url=base_url), allow_private=allow_private, timeout_s=5)
    return asyncio.run(tool.open_session())


def call(session: BrowserSession, recipient: str, **arguments: object) -> ToolResult:
    return asyncio.run(session.call(recipient, json.dumps(arguments)))


def test_search_shows_numbered_results_and_sends_exa_request(exa_double: str) -> None:
    session = make_session(exa_double)
    result = call(session, "browser.search", query="sea otters", topn=5)
    lines = result.text.splitlines()
    assert lines[0] == "[0] Search results for `sea otters` (web-search://?q=sea%20otters)"
    assert lines[1] == "**viewing lines [0 - 4] of 4**"
    assert lines[3] == "L0: 【0†Sea otters†127.0.0.1:" + exa_double.rsplit(":", 1)[1] + "】"
    assert lines[4] == "L1: Sea otters are marine mammals that use tools."
    assert not result.is_error and result.recipient == "browser.search"
    assert (result.details.action, result.details.query) == ("search", "sea otters")


def test_exa_request_shape(exa_double: str, exa_requests: list[dict]) -> None:
    exa_requests.clear()
    hits = asyncio.run(ExaBackend(API_KEY, base_url=exa_double).search("kelp", 1))
    # The body Exa documents: query, numResults, contents with text and summary (the double checks x-api-key).
    assert exa_requests == [{"query": "kelp", "numResults": 1, "contents": {"text": True, "summary": True}}]
    assert [hit.title for hit in hits] == ["Sea otters"]


def test_open_by_link_id_renders_the_real_page(exa_double: str) -> None:
    session = make_session(exa_double)
    call(session, "browser.search", query="sea otters")
    result = call(session, "browser.open", id=0)
    lines = result.text.splitlines()
    assert lines[0] == f"[1] Sea otters ({exa_double}/pages/otters.html)"
    assert lines[1].startswith("**viewing lines [0 - ")
    assert "L0: # Sea otters" in lines
    body = "\n".join(lines)
    assert "【0†kelp forests】" in body  # same-site link: no domain
    assert "【1†the encyclopedia†example.org】" in body  # off-site link: with domain
    assert "never shown" not in body  # scripts are not text
    assert result.details.action == "open_page" and result.details.url == f"{exa_double}/pages/otters.html"
    # A link on the opened page, by id, from the latest cursor.
    kelp = call(session, "browser.open", id=0)
    assert kelp.text.splitlines()[0] == f"[2] Kelp forests ({exa_double}/pages/kelp.html)"
    assert "L0: Kelp grows fast where urchins are few." in kelp.text


def test_open_by_url_follows_redirects_and_shows_text_files(exa_double: str) -> None:
    session = make_session(exa_double)
    result = call(session, "browser.open", id=f"{exa_double}/redirect")
    assert result.text.splitlines()[0] == f"[0] Kelp forests ({exa_double}/pages/kelp.html)"
    notes = call(session, "browser.open", id=f"{exa_double}/pages/notes.txt")
    assert "L0: plain notes" in notes.text and "L1: line two" in notes.text


def test_open_falls_back_to_exa_contents_when_the_site_refuses(exa_double: str) -> None:
    session = make_session(exa_double)
    call(session, "browser.search", query="otter club")
    result = call(session, "browser.open", id=1)
    assert "Members only text served by Exa contents." in result.text
    assert not result.is_error


def test_find_lists_matches_that_open_at_their_line(exa_double: str) -> None:
    session = make_session(exa_double)
    page = call(session, "browser.open", id=f"{exa_double}/pages/otters.html")
    urchin_line = next(line for line in page.text.splitlines() if "urchins" in line)
    line_number = int(urchin_line.split(":")[0][1:])
    found = call(session, "browser.find", pattern="URCHINS")
    lines = found.text.splitlines()
    assert lines[0] == f"[1] Find results for text: `URCHINS` in `Sea otters` ({exa_double}/pages/otters.html)"
    assert f"L0: 【0†match at L{line_number}】" in lines
    assert found.details.action == "find" and found.details.pattern == "URCHINS"
    opened = call(session, "browser.open", id=0)
    assert opened.text.splitlines()[1].startswith(f"**viewing lines [{line_number} - ")
    missing = call(session, "browser.find", pattern="narwhal", cursor=0)
    assert missing.text == "No matches for `narwhal` in [0] Sea otters."


def test_scrolling_with_loc_and_num_lines_and_view_cap(exa_double: str) -> None:
    session = make_session(exa_double)
    first = call(session, "browser.open", id=f"{exa_double}/pages/long.html")
    header = first.text.splitlines()[1]
    bounds = header.removeprefix("**viewing lines [0 - ").removesuffix("**").split("] of ")
    shown_last, total_last = (int(x) for x in bounds)
    assert shown_last < total_last  # a long page is cut to one screen
    assert len(first.text) < 5000
    scrolled = call(session, "browser.open", cursor=0, loc=100, num_lines=3)
    lines = scrolled.text.splitlines()
    assert lines[0].startswith("[1] Long page")
    assert lines[1] == f"**viewing lines [100 - 102] of {total_last}**"
    assert [line.split(":")[0] for line in lines[3:]] == ["L100", "L101", "L102"]
    assert all(len(line.split(": ", 1)[1]) <= 80 for line in first.text.splitlines()[3:])


def test_citations_become_url_annotations(exa_double: str) -> None:
    session = make_session(exa_double)
    call(session, "browser.search", query="sea otters")
    call(session, "browser.open", id=0)
    text, annotations = session.annotate("Otters use rocks as tools 【1†L2-L4】. Unknown 【9†L1】.")
    url = f"{exa_double}/pages/otters.html"
    assert text == f"Otters use rocks as tools ([127.0.0.1:{exa_double.rsplit(':', 1)[1]}]({url})). Unknown 【9†L1】."
    [annotation] = annotations
    assert annotation["type"] == "url_citation" and annotation["url"] == url and annotation["title"] == "Sea otters"
    assert text[annotation["start_index"]:annotation["end_index"]].startswith("([127.0.0.1")


def test_private_addresses_are_refused_without_the_flag(exa_double: str) -> None:
    session = make_session(exa_double, allow_private=False)
    for url in (f"{exa_double}/pages/otters.html", "http://10.1.2.3/", "http://169.254.169.254/latest/meta-data",
                "http://[::1]:80/", "http://localhost/"):
        result = call(session, "browser.open", id=url)
        assert result.is_error and "Refusing to open" in result.text, (url, result.text)
    call(session, "browser.search", query="sea otters")
    via_link = call(session, "browser.open", id=0)
    assert "Refusing to open" in via_link.text
    non_http = call(session, "browser.open", id="file:///etc/passwd")
    assert non_http.is_error and "Only http and https" in non_http.text


def test_errors_come_back_as_text(exa_double: str) -> None:
    session = make_session(exa_double)
    assert "no page is open yet" in call(session, "browser.open", id=3).text
    bad_json = asyncio.run(session.call("browser.search", "{not json"))
    assert bad_json.is_error and bad_json.text.startswith("Invalid arguments for browser.search")
    assert "non-empty `query`" in call(session, "browser.search").text
    assert "Unknown browser function" in call(session, "browser.click", id=1).text
    wrong_key = call(make_session(exa_double, api_key="wrong"), "browser.search", query="x")
    assert wrong_key.is_error and "HTTP 401" in wrong_key.text
    call(session, "browser.open", id=f"{exa_double}/pages/kelp.html")
    assert "link 7 is not on page [0]" in call(session, "browser.open", id=7).text


def test_namespace_is_harmonys_browser_and_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = BrowserToolServer(ExaBackend(API_KEY, base_url="http://127.0.0.1:9"))
    [namespace] = tool.namespaces()
    assert namespace.name == "browser"
    assert [t.name for t in namespace.tools] == ["search", "open", "find"]
    assert tool.has_tool("browser.find") and not tool.has_tool("browser.click") and not tool.has_tool("python")
    for name in ("EXA_API_KEY", "YDC_API_KEY", "BROWSER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert choose_search_backend() is None
    monkeypatch.setenv("YDC_API_KEY", "y")
    assert choose_search_backend().name == "you.com"
    monkeypatch.setenv("EXA_API_KEY", "e")
    assert choose_search_backend().name == "exa"
    monkeypatch.setenv("BROWSER_BACKEND", "you")
    assert choose_search_backend().name == "you.com"
