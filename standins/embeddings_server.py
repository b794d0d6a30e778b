"""A stand-in OpenAI-compatible embeddings server: `GET /v1/models`, `POST /v1/embeddings`.

Run it as a process: `python standins/embeddings_server.py [--port 0] [--dim 64] [--model NAME]`.
It prints `listening on http://127.0.0.1:PORT/v1` once ready, then serves until killed.

The embedding of a text is deterministic and needs no model: character trigrams hashed into `dim`
buckets, L2-normalised, so texts sharing many trigrams are close in cosine. `embed()` is importable,
so a test can compute the expected dense ranking itself. `GET /stats` reports what was asked (how many
requests and inputs), so a test can see that the dense path really ran. Protocol behaviour mirrors
OpenAI's: an unknown model is a 404 with the error envelope; a malformed body is a 400.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    padded = f"  {text}  "
    for i in range(len(padded) - 2):
        bucket = int.from_bytes(hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest(), "little")
        vector[bucket % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class State:
    def __init__(self, model: str, dim: int) -> None:
        self.model = model
        self.dim = dim
        self.lock = threading.Lock()
        self.requests = 0
        self.inputs = 0


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read stdout
            pass

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str) -> None:
            self._send(
                status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
            )

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": state.model, "object": "model"}]})
            elif self.path == "/stats":
                with state.lock:
                    self._send(200, {"requests": state.requests, "inputs": state.inputs})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/v1/embeddings":
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                body = json.loads(raw)
                texts = body["input"]
                model = body["model"]
            except (ValueError, KeyError, TypeError):
                self._error(400, "body must be JSON with `model` and `input`", "invalid_body")
                return
            if model != state.model:
                self._error(404, f"The model `{model}` does not exist.", "model_not_found")
                return
            if isinstance(texts, str):
                texts = [texts]
            with state.lock:
                state.requests += 1
                state.inputs += len(texts)
            data = [
                {"object": "embedding", "index": i, "embedding": embed(text, state.dim)} for i, text in enumerate(texts)
            ]
            # Reverse the list: clients must order by `index`, not by position.
            self._send(
                200,
                {
                    "object": "list",
                    "data": data[::-1],
                    "model": state.model,
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                },
            )

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--model", default="standin-embed")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(State(args.model, args.dim)))
    print(f"listening on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
