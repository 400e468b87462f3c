"""End-to-end latency of the llmseg node, measured from a second process over DDS (not a test).

    .venv/bin/python scripts/measure_node_latency.py                 # both cases, both bindings
    .venv/bin/python scripts/measure_node_latency.py --case burst --repeats 10
    .venv/bin/python scripts/measure_node_latency.py --case stream --seconds 60

Starts the node as `make demo` users would (tiny preset with its shipped weights,
config/llmseg_node.yaml) in its own process, with the test suite's transport settings
(test/ros_helpers.py), and prints measured numbers:

- burst: one 256x256 procedural frame is published and received, then 8 instructions are
  published at once; the time from the first instruction's publication to each result's arrival
  (target: all 8 within 1.5 s), with the node's own per-stage timings.
- stream: a 30 Hz camera of procedural frames and instructions at 2 Hz for --seconds: the share
  of QUEUE_FULL answers and the median / p95 latency of the answered ones.

Each case runs with the node's defaults (frame_binding: arrival, batching), with batching and
frame_binding: worker, and, for comparison, with the behaviour before batching (frame_binding:
worker, max_batch: 1, max_queue: 4). Numbers
depend on the machine and on what else runs on it: say which when quoting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

from ros_helpers import NodeProcess, RosClient, rgb_image, ros_environment, stamp_now  # noqa: E402

SETTINGS = {
    "batched": {},  # the node's defaults: bound on arrival, batched per frame
    "batched_worker_binding": {"frame_binding": "worker"},  # batched, bound when the worker takes them
    "before": {"frame_binding": "worker", "max_batch": 1, "max_queue": 4},  # as before batching
}


def scenes(count: int) -> list[np.ndarray]:
    from llmseg_model.data.procedural import ProceduralConfig, generate_scene

    return [generate_scene(ProceduralConfig(), (777, seed, 0)) for seed in range(count)]


def start(env: dict[str, str], folder: Path, name: str, params: dict) -> tuple[NodeProcess, RosClient]:
    node = NodeProcess(env, folder / f"{name}.log", params=dict(params, max_image_age=0.0), namespace=f"/{name}")
    client = RosClient(namespace=f"/{name}")
    try:
        client.wait_for_state("active", timeout=300)
        client.wait_connected()
    except TimeoutError:
        node.stop()
        raise SystemExit(f"the node did not come up; its log:\n{node.log()}")
    return node, client


def wait_results(client: RosClient, ids: list[str], timeout: float) -> dict[str, float]:
    """Arrival time (time.monotonic, taken in the subscription callback) of each id's result."""
    deadline = time.monotonic() + timeout
    while not all(i in client.arrivals for i in ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {i: client.arrivals[i] for i in ids if i in client.arrivals}


def burst(client: RosClient, samples: list, repeats: int, label: str) -> dict:
    """8 instructions at once on a frame the node already has."""
    totals = []
    for repeat in range(repeats + 1):  # the first round warms the model up and is not counted
        sample = samples[repeat % len(samples)]
        client.publish_image(rgb_image(sample.image, stamp=stamp_now()), settle=0.5)
        texts = [sample.instructions[k % len(sample.instructions)].text for k in range(8)]
        ids = [f"{label}-burst-{repeat}-{k}" for k in range(8)]
        first = time.monotonic()
        for instruction_id, text in zip(ids, texts):
            client.instruct(instruction_id, text)
        arrived = wait_results(client, ids, 120)
        if len(arrived) < 8 or repeat == 0:
            continue
        results = [client.results[i][0] for i in ids]
        totals.append(max(arrived.values()) - first)
        stages = {t.stage: round(t.seconds, 3) for t in results[-1].timings}
        print(f"  {label} burst {repeat}: all 8 answered {totals[-1]:.3f} s after the first was sent; "
              f"statuses {sorted({r.status_name for r in results})}, batch sizes {[r.batch_size for r in results]}, "
              f"last result's stages {stages}", flush=True)
    return {"all_8_answered_s": totals, "median_s": statistics.median(totals) if totals else None}


def stream(client: RosClient, samples: list, seconds: float, label: str) -> dict:
    """A 30 Hz camera and instructions at 2 Hz."""
    stop = threading.Event()
    frames = [rgb_image(s.image) for s in samples]

    def camera() -> None:
        k, next_time = 0, time.monotonic()
        while not stop.is_set():
            frame = frames[k % len(frames)]
            frame.header.stamp = stamp_now()
            client.image_pub.publish(frame)
            k += 1
            next_time += 1 / 30
            time.sleep(max(0.0, next_time - time.monotonic()))

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    time.sleep(1.0)
    sent: dict[str, float] = {}
    next_time = time.monotonic()
    for k in range(int(seconds * 2)):
        instruction_id = f"{label}-stream-{k}"
        sample = samples[k % len(samples)]
        sent[instruction_id] = time.monotonic()
        client.instruct(instruction_id, sample.instructions[k % len(sample.instructions)].text)
        next_time += 0.5
        time.sleep(max(0.0, next_time - time.monotonic()))
    arrived = wait_results(client, list(sent), 120)
    stop.set()
    thread.join()
    statuses = [client.results[i][0].status_name for i in sent if i in arrived]
    answered = [client.results[i][0] for i in sent if i in arrived
                and client.results[i][0].status_name in ("OK", "EMPTY")]
    latencies = sorted(arrived[r.instruction_id] - sent[r.instruction_id] for r in answered)

    def stage(name: str) -> float | None:
        values = [t.seconds for r in answered for t in r.timings if t.stage == name]
        return round(statistics.median(values), 3) if values else None

    out = {
        "instructions": len(sent),
        "answered": len(arrived),
        "queue_full_share": statuses.count("QUEUE_FULL") / max(len(statuses), 1),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "median_latency_s": statistics.median(latencies) if latencies else None,
        "p95_latency_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "node_median_s": {name: stage(name) for name in ("queue", "proposals", "llm", "total")},
        "mean_batch_size": statistics.mean(r.batch_size for r in answered) if answered else None,
        "frames_answered": len({(r.header.stamp.sec, r.header.stamp.nanosec) for r in answered}),
    }
    print(f"  {label} stream: {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("burst", "stream", "both"), default="both")
    parser.add_argument("--settings", choices=(*SETTINGS, "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="bursts measured (after one warm-up)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the stream case")
    parser.add_argument("--threads", type=int, default=1, help="the node's torch threads (num_threads)")
    args = parser.parse_args(argv)
    env = ros_environment()
    import os

    os.environ.update(env)
    samples = scenes(6)
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        for label in (SETTINGS if args.settings == "both" else [args.settings]):
            node, client = start(env, Path(folder), label, dict(SETTINGS[label], num_threads=args.threads))
            try:
                print(f"{label}: node parameters {SETTINGS[label] or 'defaults'}", flush=True)
                if args.case in ("burst", "both"):
                    report[f"{label} burst"] = burst(client, samples, args.repeats, label)
                if args.case in ("stream", "both"):
                    report[f"{label} stream"] = stream(client, samples, args.seconds, label)
            finally:
                client.close()
                node.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
