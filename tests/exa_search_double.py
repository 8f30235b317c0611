"""A stand-in for Exa's /search (a paid web API) that answers one result about the query."""
import json
from http.server import BaseHTTPRequestHandler


class SearchDouble(BaseHTTPRequestHandler):
    """Stands in for Exa's /search (a paid API)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        body = json.dumps({"results": [{"url": "https://example.org/otters", "title": "Otters",
                                        "summary": f"About {request['query']}."}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
