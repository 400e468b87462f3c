"""Soak: a standing instruction at 5 Hz on a 30 Hz camera for 2 minutes (not a test).

    .venv/bin/python scripts/soak_standing.py                    # 120 s, Track goal at 5 Hz, depth on
    .venv/bin/python scripts/soak_standing.py --seconds 600 --rate 5 --no-depth

Starts the default node (tiny preset, shipped weights, config/llmseg_node.yaml, plus use_depth) in
its own process, publishes procedural 256x256 frames at 30 Hz with aligned 32FC1 depth and camera
info from a second process, sends one Track goal, and every --every seconds prints what the node
reports on /diagnostics (queue depth, frame age, per-stage p50) and its resident memory
(/proc/<pid>/status), with the answers received in that interval. At the end it prints the
summary and whether queue and memory stayed flat (memory: the last third's mean against the
first third's, after a warm-up interval).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

from ros_helpers import Camera, NodeProcess, RosClient, camera_info, ros_environment, stamp_now  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=5.0, help="the Track goal's rate (Hz)")
    parser.add_argument("--camera", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between reports")
    parser.add_argument("--no-depth", action="store_true", help="colour only (use_depth false)")
    parser.add_argument("--threads", type=int, default=1, help="the node's torch threads (num_threads)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a further node parameter (value read as YAML), e.g. gil_switch_interval=0.005")
    args = parser.parse_args(argv)

    from llmseg_model.data.procedural import ProceduralConfig, generate_scene

    env = ros_environment()
    os.environ.update(env)
    samples = [generate_scene(ProceduralConfig(), (999, seed, 0)) for seed in range(8)]
    depths = []
    for sample in samples:
        depth = np.full(sample.image.shape[:2], 2.5, np.float32)
        for k, mask in enumerate(sample.masks):
            depth[mask > 0] = 0.8 + 0.25 * k
        depths.append(depth)
    params = {"use_depth": not args.no_depth, "num_threads": args.threads}
    for item in args.param:
        name, eq, value = item.partition("=")
        if not eq:
            parser.error(f"--param {item!r}: expected NAME=VALUE")
        params[name] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as folder:
        node = NodeProcess(env, Path(folder) / "node.log", params=params, namespace="/soak")
        client = RosClient(namespace="/soak")
        try:
            client.wait_for_state("active", timeout=300)
            client.wait_connected()
            info = camera_info(300.0, 300.0, 127.5, 127.5, 256, 256, stamp_now())
            print(f"node pid {node.process.pid}; camera {args.camera} Hz, Track goal at {args.rate} Hz for "
                  f"{args.seconds:.0f} s, depth {'off' if args.no_depth else 'on'}", flush=True)
            print(f"{'t (s)':>6} {'answers':>7} {'rate':>6} {'lat p50':>8} {'queue':>5} {'in diag':>7} "
                  f"{'frame age':>9} {'proposals p50':>13} {'RSS MiB':>8} {'lost':>5}", flush=True)
            rows = []
            with Camera(client, [s.image for s in samples], rate=args.camera,
                        depths=None if args.no_depth else depths, info=info) as camera:
                goal = client.track("all the things I could roll", rate=args.rate, goal_id="soak")
                start = last = time.monotonic()
                seen = 0
                while time.monotonic() - start < args.seconds:
                    time.sleep(max(0.0, last + args.every - time.monotonic()))
                    now = time.monotonic()
                    new = goal.feedback[seen:]
                    seen += len(new)
                    latency = [next(t.seconds for t in r.timings if t.stage == "total") for r in new]
                    diag = client.diagnostic_values()
                    row = {
                        "t": now - start, "answers": len(new), "rate": len(new) / (now - last),
                        "latency": statistics.median(latency) if latency else float("nan"),
                        "queue": int(diag.get("queue depth", -1)), "rss": rss_mib(node.process.pid),
                        "lost": diag.get("frames lost in transport", "?"),
                    }
                    rows.append(row)
                    print(f"{row['t']:6.0f} {row['answers']:7d} {row['rate']:6.2f} {row['latency']:8.3f} "
                          f"{row['queue']:5d} {diag.get('track goals', '?'):>7} {diag.get('frame age (s)', '?'):>9} "
                          f"{diag.get('proposals p50 (s)', '?'):>13} {row['rss']:8.1f} {row['lost']:>5}", flush=True)
                    last = now
                goal.cancel()
                status, summary = goal.result()
            frames = len(camera.published)
        finally:
            client.close()
            node.stop()
    steady = rows[1:] or rows
    third = max(1, len(steady) // 3)
    first, final = statistics.mean(r["rss"] for r in steady[:third]), statistics.mean(r["rss"] for r in steady[-third:])
    print(f"\nsummary: {summary.answered} answers ({summary.ok} OK, {summary.empty} EMPTY, {summary.failed} other) on "
          f"{frames} frames sent in {args.seconds:.0f} s: {summary.answered / args.seconds:.2f} answers/s for a "
          f"{args.rate} Hz goal; mean latency {summary.mean_latency:.3f} s; goal ended: {summary.reason}")
    print(f"queue depth: max {max(r['queue'] for r in rows)} over the run; "
          f"RSS: {first:.1f} MiB in the first third, {final:.1f} MiB in the last ({final - first:+.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
