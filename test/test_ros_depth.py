"""The target in 3D and /diagnostics, from a separate process: the default node (tiny preset,
shipped weights) with use_depth, fed procedural scenes rendered with a known depth per object and a
pinhole CameraInfo, so the true centroid of every object is known; then missing, stale, bad and
all-invalid depth (a depth status, the 2D answer still given, the node alive), the point cloud and
markers, and what /diagnostics reports.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ros_helpers import (
    active_node, camera_info, centroid_errors, depth_image, held_out_scene, PROCEDURAL_K, render_depth,
    requires_interfaces, rgb_image, stamp_now,
)

pytestmark = [requires_interfaces, pytest.mark.timeout(600)]

FX, FY, CX, CY = PROCEDURAL_K  # pinhole intrinsics of the 256x256 procedural camera

@pytest.fixture(scope="module")
def depth_node(ros_env, tmp_path_factory):
    from sensor_msgs.msg import CameraInfo, Image

    folder = tmp_path_factory.mktemp("depth")
    params = {"use_depth": True, "max_image_age": 0.0, "num_threads": 1}

    def depth_publishers(client) -> None:
        client.depth_pub = client.node.create_publisher(Image, "depth_image", 10)
        client.info_pub = client.node.create_publisher(CameraInfo, "depth_info", 10)
        client.wait_for(lambda: client.depth_pub.get_subscription_count() > 0
                        and client.info_pub.get_subscription_count() > 0, 30, "the depth subscriptions")

    with active_node(ros_env, folder / "node.log", params, namespace="/depth", timeout=300, ready=depth_publishers) as (node, client):
        yield node, client


def publish(client, sample, depth: np.ndarray | None, encoding: str = "32FC1", depth_offset: float = 0.0,
            info=None) -> object:
    """Camera info, depth (stamped depth_offset s from the colour frame) and colour; the colour
    frame's stamp is returned."""
    stamp = stamp_now()
    if depth is not None:
        depth_stamp = stamp_now(depth_offset) if depth_offset else stamp
        height, width = depth.shape
        client.info_pub.publish(info if info is not None else camera_info(FX, FY, CX, CY, width, height, depth_stamp,
                                                                          "camera_optical"))
        client.depth_pub.publish(depth_image(depth, depth_stamp, "camera_optical", encoding))
    client.publish_image(rgb_image(sample.image, stamp, "camera_optical"))
    return stamp


def ask(client, instruction_id: str, text: str, stamp) -> object:
    client.instruct(instruction_id, text, image_stamp=stamp)
    return client.wait_result(instruction_id, timeout=120)


def point(p) -> np.ndarray:
    return np.array([p.x, p.y, p.z])


def test_first_answer_without_any_depth_is_2d_with_depth_missing(depth_node):
    node, client = depth_node
    sample = held_out_scene(8)
    stamp = publish(client, sample, None)
    result = ask(client, "no-depth-yet", sample.instructions[0].text, stamp)
    assert result.status_name in ("OK", "EMPTY"), result.error
    assert result.mask.width == 256  # the 2D answer is given
    assert result.depth_status_name == "DEPTH_MISSING" and "no depth image received" in result.depth_error
    assert not result.target_3d.valid


@pytest.mark.parametrize("seed, encoding", [(8, "32FC1"), (10, "16UC1")])
def test_centroids_of_procedural_objects_within_1cm_or_1_percent(depth_node, seed, encoding):
    """Every instance the node places in 3D that is a scene object (IoU >= 0.5 with its true mask)
    has its centroid within 1 cm or 1% of its depth of the truth; 16UC1 in millimetres, with 5% of
    the pixels holes (zero)."""
    node, client = depth_node
    sample = held_out_scene(seed)
    depth = render_depth(sample)
    if encoding == "16UC1":
        depth = np.round(depth * 1000)
        depth[np.random.default_rng(seed).random(depth.shape) < 0.05] = 0
    stamp = publish(client, sample, depth, encoding)
    checked = 0
    for k, instruction in enumerate(sample.instructions):
        result = ask(client, f"centroid-{seed}-{k}", instruction.text, stamp)
        assert result.status_name in ("OK", "EMPTY"), result.error
        if result.status_name == "EMPTY":
            continue
        assert result.depth_status_name == "DEPTH_OK", result.depth_error
        assert result.depth_header.frame_id == "camera_optical" and result.depth_header.stamp == stamp
        for instance in result.instances:
            assert instance.target_3d.valid and instance.target_3d.valid_pixels > 0
        # The instances that are scene objects: the wall behind their mask edges is left out (it is
        # 0.7 m or more behind them), holes and all.
        for error, depth_m, _ in centroid_errors(result, sample):
            assert error <= max(0.01, 0.01 * depth_m), (instruction.text, error, depth_m)
            checked += 1
        union = result.target_3d
        assert union.valid and union.inlier_pixels <= union.valid_pixels
        assert union.inlier_pixels >= max(i.target_3d.inlier_pixels for i in result.instances)
    assert checked >= 2, "too few objects found to check; pick another held-out seed"


def test_points_and_markers_show_the_target(depth_node):
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    node, client = depth_node
    clouds, arrays = [], []
    client.node.create_subscription(PointCloud2, "points", clouds.append, 10)
    client.node.create_subscription(MarkerArray, "markers", arrays.append, 10)
    client.wait_for(lambda: client.node.count_publishers(client.node.resolve_topic_name("points")) > 0, 30, "points")
    time.sleep(1.0)  # the node's side of the match
    sample = held_out_scene(8)
    stamp = publish(client, sample, render_depth(sample))
    instruction = next(i for i in sample.instructions if len(i.targets) == 1)
    result = ask(client, "rviz", instruction.text, stamp)
    assert result.depth_status_name == "DEPTH_OK", result.depth_error
    client.wait_for(lambda: clouds and arrays, 30, "a point cloud and markers")
    cloud = clouds[-1]
    assert cloud.header.frame_id == "camera_optical" and cloud.width == result.target_3d.inlier_pixels
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"] and cloud.point_step == 16
    xyz = np.frombuffer(cloud.data, np.float32).reshape(-1, 4)[:, :3]
    np.testing.assert_allclose(xyz.mean(axis=0), point(result.target_3d.centroid), atol=1e-4)
    boxes = [m for m in arrays[-1].markers if m.type == Marker.CUBE]
    assert len(boxes) == sum(i.target_3d.valid for i in result.instances) and boxes[0].ns == "rviz"
    np.testing.assert_allclose(point(boxes[0].pose.position), point(result.instances[0].target_3d.box_center.position))
    assert any(m.type == Marker.TEXT_VIEW_FACING and instruction.text[:20] in m.text for m in arrays[-1].markers)


def test_depth_that_does_not_match_or_cannot_be_used(depth_node):
    """Each case gets a depth status and the 2D answer; none ends the node."""
    node, client = depth_node
    sample = held_out_scene(8)
    text = sample.instructions[0].text
    depth = render_depth(sample)

    def case(name: str, **publish_args) -> object:
        result = ask(client, f"depth-{name}", text, publish(client, sample, **publish_args))
        assert result.status_name in ("OK", "EMPTY"), result.error
        assert result.mask.width == 256
        return result

    stale = case("stale", depth=depth, depth_offset=-1.0)  # the depth image is 1 s older than the frame
    assert stale.depth_status_name == "DEPTH_STALE" and "depth_tolerance" in stale.depth_error
    zeros = case("zeros", depth=np.zeros_like(depth))
    assert zeros.depth_status_name == "DEPTH_NO_VALID" and not zeros.target_3d.valid
    nan = case("nan", depth=np.full_like(depth, np.nan))
    assert nan.depth_status_name == "DEPTH_NO_VALID"
    far = case("far", depth=np.full_like(depth, 50.0))  # beyond max_depth
    assert far.depth_status_name == "DEPTH_NO_VALID" and "10.0 m" in far.depth_error
    info = camera_info(FX, FY, CX, CY, 128, 128, stamp_now(), "camera_optical")
    size = case("info-size", depth=depth, info=info)
    assert size.depth_status_name == "DEPTH_BAD" and "camera info is 128x128" in size.depth_error
    info = camera_info(0.0, 0.0, CX, CY, 256, 256, stamp_now(), "camera_optical")
    focal = case("info-focal", depth=depth, info=info)
    assert focal.depth_status_name == "DEPTH_BAD" and "focal" in focal.depth_error

    stamp = stamp_now()
    client.info_pub.publish(camera_info(FX, FY, CX, CY, 256, 256, stamp, "camera_optical"))
    wrong = depth_image(depth, stamp, "camera_optical")
    wrong.encoding = "rgb8"
    client.depth_pub.publish(wrong)
    client.publish_image(rgb_image(sample.image, stamp, "camera_optical"))
    result = ask(client, "depth-encoding", text, stamp)
    assert result.depth_status_name == "DEPTH_BAD" and "unsupported depth encoding" in result.depth_error

    stamp = stamp_now()
    short = depth_image(depth, stamp, "camera_optical")
    short.data = bytes(short.data)[:-7]
    client.depth_pub.publish(short)
    client.publish_image(rgb_image(sample.image, stamp, "camera_optical"))
    result = ask(client, "depth-short", text, stamp)
    assert result.depth_status_name == "DEPTH_BAD" and "expected step" in result.depth_error

    good = case("good-again", depth=depth)
    assert good.depth_status_name == "DEPTH_OK"
    assert node.process.poll() is None


def test_service_with_its_own_image_has_no_depth(depth_node):
    node, client = depth_node
    sample = held_out_scene(8)
    result = client.segment(sample.instructions[0].text, image=rgb_image(sample.image), timeout=120)
    assert result.status_name in ("OK", "EMPTY")
    assert result.depth_status_name == "DEPTH_MISSING" and "own image" in result.depth_error


def test_diagnostics_report_health(depth_node):
    """One status per period, named after the node: model, device, queue, frame and depth age,
    latency percentiles, counts; WARN with the reason once frames stop coming."""
    node, client = depth_node
    sample = held_out_scene(8)
    publish(client, sample, render_depth(sample))
    client.instruct("diag", sample.instructions[0].text)
    client.wait_result("diag", timeout=120)
    before = client.diagnostics_count
    client.wait_for(lambda: client.diagnostics_count >= before + 2, 30, "two diagnostics messages")
    status = client.diagnostics[-1]
    values = client.diagnostic_values(status)
    assert status.name.endswith(client.target) and status.hardware_id == "cpu"
    assert values["lifecycle state"] == "active" and values["model"] == "loaded" and values["device"] == "cpu"
    assert values["preset"] == "tiny" and values["queue depth"] == "0" and values["max_queue"] == "8"
    assert values["depth"] == "on" and values["camera info"] == "received"
    assert float(values["frame age (s)"]) >= 0 and float(values["depth age (s)"]) >= 0
    assert values["newest frame stamp (s)"].count(".") == 1 and float(values["newest frame stamp (s)"]) > 0
    assert int(values["proposal passes"]) >= 1 and int(values["batches"]) >= int(values["proposal passes"])
    assert int(values["results OK"]) >= 1 and int(values["bad input (BAD_IMAGE, BAD_INSTRUCTION)"]) >= 0
    for stage in ("queue", "proposals", "llm", "total", "depth"):
        assert float(values[f"{stage} p50 (s)"]) <= float(values[f"{stage} p95 (s)"])
    assert "rejected (QUEUE_FULL)" in values and "frames lost in transport" in values
    # The node's interpreter runs with gil_switch_interval (its default, then a value set at run time).
    assert float(values["interpreter switch interval (s)"]) == pytest.approx(0.0002)
    assert client.set_parameters(gil_switch_interval=0.001)[0].successful
    assert not client.set_parameters(gil_switch_interval=0.0)[0].successful  # out of range: refused, kept
    seen = client.diagnostics_count
    client.wait_for(lambda: client.diagnostics_count >= seen + 2, 30, "diagnostics after the change")
    assert float(client.diagnostic_values()["interpreter switch interval (s)"]) == pytest.approx(0.001)
    assert client.set_parameters(gil_switch_interval=0.0002)[0].successful

    # No frames for a while: WARN, saying so.
    client.wait_for(lambda: client.diagnostics and "no image for" in client.diagnostics[-1].message, 30,
                    "a warning that frames stopped")
    assert client.diagnostics[-1].level == b"\x01"  # WARN
    publish(client, sample, render_depth(sample))
    client.wait_for(lambda: "no image for" not in client.diagnostics[-1].message, 30, "the warning to clear")
