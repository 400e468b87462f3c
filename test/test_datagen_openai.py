"""The OpenAI-compatible backend against a local HTTP server started by the test on 127.0.0.1.

The server answers /v1/chat/completions with canned replies chosen per image and per attempt:
well-formed JSON, fenced JSON, malformed JSON, prose, unknown object ids, a question naming its
category, a reply slower than the client timeout, 429 with Retry-After, 500, and 401. The test
checks that the real `openai` client, the generator's retries, rate limit, validation and resume
handle each one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from llmseg_model.datagen.backends import BackendError, RateLimiter
from llmseg_model.datagen.config import DatagenConfig
from llmseg_model.datagen.generate import Generator

API_KEY = "sk-test-secret-do-not-log"
SLEEP_S = 1.5  # a reply slower than the client's timeout below
MAX_REQUESTS = 200  # the server refuses work past this, so a retry bug cannot loop for long

GOOD = {
    "questions": [
        {"question": "Where could I sit down to rest my legs for a while?", "answer": "The chair, made for sitting.", "objects": ["obj1"]},
        {"question": "What would I need to read in the evening?", "answer": "The book and the lamp for light.", "objects": ["obj2", "obj3"]},
    ]
}
NAMES = {
    "questions": [
        {"question": "Where is the chair in this room?", "answer": "The chair.", "objects": ["obj1"]},
        {"question": "What would I need to read in the evening?", "answer": "The book and the lamp.", "objects": ["obj2", "obj3"]},
    ]
}
UNKNOWN = {"questions": [{"question": "Which thing hangs from the ceiling?", "answer": "The fan.", "objects": ["obj42"]}]}
DUPLICATE = {"questions": [GOOD["questions"][0], dict(GOOD["questions"][0], objects=["obj2"])]}

SCRIPTS = {
    "ok.jpg": ["good"],
    "fenced.jpg": ["fenced"],
    "malformed.jpg": ["malformed", "good"],
    "prose.jpg": ["prose"],  # every attempt: the image is finally rejected
    "unknown.jpg": ["unknown", "good"],
    "names.jpg": ["names"],
    "duplicate.jpg": ["duplicate"],
    "timeout.jpg": ["sleep", "good"],
    "throttled.jpg": ["429", "500", "good"],
    "down.jpg": ["500"],  # every request: transport failure, left for the next run
}


class CannedChatServer:
    """http.server on an ephemeral 127.0.0.1 port, in a thread, with per-image scripted replies."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = dict(scripts)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "CannedChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def requests_for(self, image: str) -> list[dict]:
        return [r for r in self.requests if r["image"] == image]

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = json.loads(request.rfile.read(int(request.headers["Content-Length"])))
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        image = re.search(r"Image name: (\S+)", user).group(1)
        with self.lock:
            attempt = len(self.requests_for(image))
            script = self.scripts[image]
            behaviour = script[min(attempt, len(script) - 1)]
            self.requests.append(
                {"image": image, "behaviour": behaviour, "time": time.monotonic(), "body": body, "auth": request.headers.get("Authorization")}
            )
            too_many = len(self.requests) > MAX_REQUESTS
        if too_many or request.path != "/v1/chat/completions":
            return self._send(request, 500, {"error": {"message": "test server: refusing"}})
        if behaviour == "429":
            return self._send(request, 429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0.3"})
        if behaviour in ("500", "401"):
            return self._send(request, int(behaviour), {"error": {"message": f"canned {behaviour}"}})
        if behaviour == "sleep":
            time.sleep(SLEEP_S)
            behaviour = "good"
        content = {
            "good": json.dumps(GOOD),
            "fenced": "```json\n" + json.dumps(GOOD) + "\n```",
            "malformed": json.dumps(GOOD)[:-7],
            "prose": "Sure! Here are the questions: " + json.dumps(GOOD),
            "unknown": json.dumps(UNKNOWN),
            "names": json.dumps(NAMES),
            "duplicate": json.dumps(DUPLICATE),
        }[behaviour]
        completion = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }
        self._send(request, 200, completion)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the reply was ready


CATEGORIES = [
    {"id": 5, "name": "chair", "synonyms": ["chair"], "def": "a seat for one person, with a support for the back"},
    {"id": 6, "name": "book", "synonyms": ["book"], "def": "a written work bound between covers"},
    {"id": 7, "name": "lamp", "synonyms": ["lamp"], "def": "a piece of furniture holding electric light bulbs"},
]


def write_lvis(folder: Path, names: list[str]) -> Path:
    """Each image: a large chair (obj1), a medium book (obj2), a small lamp (obj3)."""
    images, annotations = [], []
    for index, name in enumerate(names):
        images.append({"id": index + 1, "file_name": name, "width": 120, "height": 90})
        for category, (x, y, w, h) in zip((5, 6, 7), ((5, 5, 60, 50), (70, 10, 30, 30), (80, 60, 20, 20))):
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": category, "segmentation": [polygon], "bbox": [x, y, w, h]}
            )
    path = folder / "lvis_openai.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def openai_config(tmp_path: Path, annotations: Path, base_url: str) -> DatagenConfig:
    return DatagenConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "sources": [{"kind": "lvis", "annotations": str(annotations)}],
            "prompt": {"questions_per_image": 2, "min_questions": 1},
            "backend": {
                "kind": "openai",
                "base_url": base_url,
                "model": "test-model",
                "api_key_env": "DATAGEN_TEST_KEY",
                "timeout_s": 0.5,
                "max_retries": 2,
                "backoff_s": 0.01,
                "backoff_max_s": 0.05,
                "max_attempts": 3,
                "requests_per_minute": 1200,  # one request per 50 ms across all workers
                "concurrency": 3,
            },
        }
    )


def _mask(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _box(x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((90, 120), bool)
    mask[y : y + h, x : x + w] = True
    return mask


def test_openai_backend_validation_retries_rate_limit_and_resume(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DATAGEN_TEST_KEY", API_KEY)
    caplog.set_level(logging.DEBUG)
    annotations = write_lvis(tmp_path, list(SCRIPTS))
    with CannedChatServer(SCRIPTS) as server:
        config = openai_config(tmp_path, annotations, server.base_url)
        report = Generator(config).run()
        calls = {name: [r["behaviour"] for r in server.requests_for(name)] for name in SCRIPTS}

        assert calls == {
            "ok.jpg": ["good"],
            "fenced.jpg": ["fenced"],
            "malformed.jpg": ["malformed", "good"],
            "prose.jpg": ["prose"] * 3,
            "unknown.jpg": ["unknown", "good"],
            "names.jpg": ["names"],
            "duplicate.jpg": ["duplicate"],
            "timeout.jpg": ["sleep", "good"],
            "throttled.jpg": ["429", "500", "good"],
            "down.jpg": ["500"] * 3,
        }
        assert (report["images"]["accepted"], report["images"]["rejected"], report["images"]["failed"]) == (8, 1, 1)
        assert report["image_rejections"] == {"no_valid_questions": 1}
        assert report["question_rejections"] == {"malformed_json": 4, "unknown_object": 1, "names_category": 1, "duplicate": 1}
        assert report["request_errors"] == {"timeout": 1, "rate_limited": 1, "http_500": 4}
        assert report["requests"]["sent"] == len(server.requests) == 19
        assert report["requests"]["retries"] == 5  # timeout 1, throttled 2, down 2
        assert report["requests"]["prompt_tokens"] == 100 * 13  # 13 replies reached the client

        # a re-ask carries the rejected reply and says what was wrong
        second = server.requests_for("malformed.jpg")[1]["body"]["messages"]
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
        assert "not the JSON object" in second[-1]["content"]
        # every request: the configured model, JSON mode, the key from the environment
        for r in server.requests:
            assert r["body"]["model"] == "test-model"
            assert r["body"]["response_format"] == {"type": "json_object"}
            assert r["auth"] == f"Bearer {API_KEY}"
        # Retry-After of the 429 was honoured, and the shared limiter spaced requests out
        throttled = server.requests_for("throttled.jpg")
        assert throttled[1]["time"] - throttled[0]["time"] >= 0.25
        # slots are 50 ms apart; arrivals jitter with client-side work, so check 5-request windows
        times = sorted(r["time"] for r in server.requests)
        assert min(b - a for a, b in zip(times, times[5:])) >= 0.15

        out = Path(config.output_dir)
        entries = {k: v for name in ("train", "val", "test") for k, v in json.loads((out / f"{name}.json").read_text()).items()}
        assert set(entries) == set(SCRIPTS) - {"prose.jpg", "down.jpg"}
        ok = entries["ok.jpg"]["qa_pairs"]
        assert [qa["question"] for qa in ok] == [q["question"] for q in GOOD["questions"]]
        assert np.array_equal(_mask(ok[0]["rle_seg"]), _box(5, 5, 60, 50))
        assert np.array_equal(_mask(ok[1]["rle_seg"]), _box(70, 10, 30, 30) | _box(80, 60, 20, 20))
        assert [len(entries[n]["qa_pairs"]) for n in ("names.jpg", "duplicate.jpg", "unknown.jpg")] == [1, 1, 2]
        for path in out.iterdir():
            assert API_KEY not in path.read_text()
        assert API_KEY not in caplog.text

        # the next run asks only for the image that failed in transport; the server is back up
        server.scripts["down.jpg"] = ["good"]
        before = len(server.requests)
        again = Generator(config).run()
        assert [r["image"] for r in server.requests[before:]] == ["down.jpg"]
        assert again["images"]["already_done"] == 9 and again["images"]["accepted"] == 1
        assert sum(again["splits"].values()) == 9


def test_fatal_http_error_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAGEN_TEST_KEY", API_KEY)
    names = [f"img{i}.jpg" for i in range(6)]
    annotations = write_lvis(tmp_path, names)
    with CannedChatServer({name: ["401"] for name in names}) as server:
        config = openai_config(tmp_path, annotations, server.base_url)
        with pytest.raises(BackendError, match="401"):
            Generator(config).run()
        assert len(server.requests) <= config.backend.concurrency * 2  # no retries of a refused key
    report = json.loads((Path(config.output_dir) / "report.json").read_text())
    assert report["images"]["accepted"] == 0


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAGEN_TEST_KEY", raising=False)
    config = openai_config(tmp_path, write_lvis(tmp_path, ["a.jpg", "b.jpg"]), "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="DATAGEN_TEST_KEY"):
        Generator(config).run()


def test_rate_limiter_spaces_threads():
    limiter = RateLimiter(requests_per_minute=600)  # 100 ms apart
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(2):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    assert len(stamps) == 6
    assert min(b - a for a, b in zip(stamps, stamps[1:])) >= 0.09
    assert RateLimiter(0).acquire() == 0.0
