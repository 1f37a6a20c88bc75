"""A scripted stand-in for the Anthropic Messages API, served on 127.0.0.1 only.

The real Claude Code CLI, pointed at it with ANTHROPIC_BASE_URL and a made-up API key, runs its
real agent loop and its real permission checks: each reply of this "model" is the next tool call
of a script; the CLI's tool results (what ran, what was denied) are recorded for the test. No
request leaves this machine and no real credential is involved.

    with FakeModel([("Bash", {"command": "git status"}), ...]) as model:
        env["ANTHROPIC_BASE_URL"] = model.url
        ...run claude...
    model.results["toolu_000"]  ->  {"is_error": False, "text": "On branch main ..."}
"""
from __future__ import annotations

import http.server
import json
import threading


class FakeModel:
    def __init__(self, script: list[tuple[str, dict]], final_text: str = "done"):
        self.script = list(script)
        self.final_text = final_text
        self.results: dict[str, dict] = {}
        self.prompts: list[str] = []  # the user's text blocks before the first tool result
        self.tool_lists: list[list[str]] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeModel":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def result(self, index: int) -> dict | None:
        return self.results.get(f"toolu_{index:03d}")

    def reply_for(self, body: dict) -> tuple[list[dict], str]:
        tools = [tool.get("name") for tool in body.get("tools", []) if isinstance(tool, dict)]
        with self.lock:
            if tools:
                self.tool_lists.append(tools)
            done = 0
            for message in body.get("messages", []):
                content = message.get("content")
                if message.get("role") != "user" or not isinstance(content, list):
                    continue
                for block in content:
                    if not isinstance(block, dict):
                        continue
                    if block.get("type") == "text" and not self.results and not done:
                        self.prompts.append(block.get("text", ""))
                    if block.get("type") == "tool_result":
                        text = block.get("content")
                        if isinstance(text, list):
                            text = "".join(part.get("text", "") for part in text
                                           if isinstance(part, dict))
                        self.results[block["tool_use_id"]] = {"is_error": bool(block.get("is_error")),
                                                              "text": str(text)}
                        done += 1
        if "Bash" in tools and done < len(self.script):
            name, arguments = self.script[done]
            return [{"type": "tool_use", "id": f"toolu_{done:03d}", "name": name,
                     "input": arguments}], "tool_use"
        return [{"type": "text", "text": self.final_text}], "end_turn"


def _events(blocks: list[dict], stop: str):
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "text", "text": ""}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "text_delta", "text": block["text"]}}
        else:
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "tool_use", "id": block["id"],
                                                            "name": block["name"], "input": {}}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": json.dumps(block["input"])}}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"output_tokens": 5}}
    yield "message_stop", {"type": "message_stop"}


def _handler(model: FakeModel):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            if self.path.split("?")[0].endswith("/count_tokens"):
                return self._json({"input_tokens": 10})
            blocks, stop = model.reply_for(body)
            if body.get("stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.end_headers()
                for name, data in _events(blocks, stop):
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                return
            self._json({"id": "msg_fake", "type": "message", "role": "assistant",
                        "model": "claude-fake", "content": blocks, "stop_reason": stop,
                        "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}})

        def do_GET(self) -> None:
            self._json({"type": "error", "error": {"type": "not_found_error", "message": "fake"}}, 404)

        def _json(self, payload: dict, code: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
