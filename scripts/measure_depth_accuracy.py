"""3D centroid errors of the node on procedural scenes with a known depth per object (not a test).

    .venv/bin/python scripts/measure_depth_accuracy.py --scenes 20

Starts the default node (tiny preset, shipped weights) with use_depth, and for each held-out
procedural scene publishes its colour image, a depth image in which every object is flat at its own
depth before a tilted wall (test/ros_helpers.py: render_depth) and a pinhole CameraInfo; asks every
instruction of the scene and compares the centroid of each instance that is one of the scene's
objects (IoU >= 0.5) with the object's true centroid. Prints the errors against the target (1 cm or
1% of the depth, whichever is larger) for 32FC1 and for 16UC1 with 5% holes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

from ros_helpers import (  # noqa: E402
    PROCEDURAL_K, NodeProcess, RosClient, camera_info, centroid_errors, depth_image, render_depth, rgb_image,
    ros_environment, stamp_now,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    args = parser.parse_args(argv)

    from sensor_msgs.msg import CameraInfo, Image

    from llmseg_model.data.procedural import ProceduralConfig, generate_scene

    env = ros_environment()
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as folder:
        node = NodeProcess(env, Path(folder) / "node.log", params={"use_depth": True, "max_image_age": 0.0},
                           namespace="/accuracy")
        client = RosClient(namespace="/accuracy")
        try:
            depth_pub = client.node.create_publisher(Image, "depth_image", 10)
            info_pub = client.node.create_publisher(CameraInfo, "depth_info", 10)
            client.wait_for_state("active", timeout=300)
            client.wait_connected()
            client.wait_for(lambda: depth_pub.get_subscription_count() > 0, 30, "the depth subscription")
            errors: dict[str, list[tuple[float, float, float]]] = {"32FC1": [], "16UC1": []}
            asked = 0
            for seed in range(args.scenes):
                sample = generate_scene(ProceduralConfig(), (12345, 100 + seed, 0))
                for encoding in errors:
                    depth = render_depth(sample)
                    if encoding == "16UC1":
                        depth = np.round(depth * 1000)
                        depth[np.random.default_rng(seed).random(depth.shape) < 0.05] = 0
                    stamp = stamp_now()
                    info_pub.publish(camera_info(*PROCEDURAL_K, 256, 256, stamp, "camera_optical"))
                    depth_pub.publish(depth_image(depth, stamp, "camera_optical", encoding))
                    client.publish_image(rgb_image(sample.image, stamp, "camera_optical"))
                    for k, instruction in enumerate(sample.instructions):
                        instruction_id = f"acc-{seed}-{encoding}-{k}"
                        client.instruct(instruction_id, instruction.text, image_stamp=stamp)
                        result = client.wait_result(instruction_id, timeout=120)
                        asked += 1
                        if result.depth_status_name == "DEPTH_OK":
                            errors[encoding] += centroid_errors(result, sample)
        finally:
            client.close()
            node.stop()
    print(f"{args.scenes} held-out scenes, {asked} instructions")
    for encoding, pairs in errors.items():
        if not pairs:
            print(f"{encoding}: no instance matched an object")
            continue
        mm = sorted(1000 * e for e, _, _ in pairs)
        misses = [(e, d, iou) for e, d, iou in pairs if e > max(0.01, 0.01 * d)]
        within = len(pairs) - len(misses)
        print(f"{encoding}: {len(pairs)} instances that are scene objects: centroid error median {statistics.median(mm):.2f} mm, "
              f"p95 {mm[int(0.95 * (len(mm) - 1))]:.2f} mm, max {mm[-1]:.2f} mm; within 1 cm / 1% of depth: "
              f"{within} of {len(pairs)}" + "".join(f"; miss: {1000 * e:.1f} mm at {d:.2f} m, mask IoU {iou:.2f} with the "
                                                    "object" for e, d, iou in misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
