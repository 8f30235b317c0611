"""Text with U+2028, U+2029 or U+0085 (which JSON may carry unescaped) never splits a streamed event,
neither in what the server sends nor in how bench_serving reads it. Found by a GPU benchmark run in
which one of 64 random-token streams came back unparseable."""
import asyncio
import json

from oss_serve.api.sse import sse_data
from oss_serve.bench.sse import SSEParser, iter_sse_lines, parse_sse_text

TRICKY = "a\u2028b\u2029c\x85d\re"


def test_server_events_hold_no_raw_line_separators():
    frame = sse_data({"text": TRICKY})
    body = frame.decode()
    assert body.endswith("\n\n") and body.count("\n") == 2
    assert not any(ch in body for ch in "\u2028\u2029\x85\r")
    assert json.loads(body.removeprefix("data: ").strip())["text"] == TRICKY


def test_client_splits_lines_only_where_the_format_says():
    raw_json = json.dumps({"text": "x\u2028y\x85z"}, ensure_ascii=False).encode()
    stream = b"data: " + raw_json + b"\r\n\r\ndata: [DONE]\n\n"

    async def chunks():
        for i in range(0, len(stream), 3):  # split mid-character and mid-CRLF
            yield stream[i:i + 3]

    async def events():
        parser, found = SSEParser(), []
        async for line in iter_sse_lines(chunks()):
            if (event := parser.feed_line(line)) is not None:
                found.append(event.data)
        return found

    data = asyncio.run(events())
    assert json.loads(data[0])["text"] == "x\u2028y\x85z" and data[1] == "[DONE]"
    assert [e.data for e in parse_sse_text(stream.decode())] == data
