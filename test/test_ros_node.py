"""The llmseg node in its own process, driven over DDS from this one: lifecycle, parameters and
every status that needs no model (no frame yet, bad encoding, size/step mismatch, empty or
oversized text, stale frame, frames named by stamp, not active in every state). The node runs
with lazy_model_load, so none of this depends on trained weights; configure's failure on missing
weights is tested without it. Crash and fuzz cases are in test_ros_robustness.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ros_helpers import (
    active_node, NodeProcess, requires_interfaces, rgb_image, RosClient, session_namespace,
    stamp_now,
)

pytestmark = [requires_interfaces, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lazy_node(ros_env, tmp_path_factory):
    """One active node (lazy model load, so no weights needed) and a client talking to it."""
    log = tmp_path_factory.mktemp("ros") / "node.log"
    with active_node(ros_env, log, {"lazy_model_load": True}) as (node, client):
        yield node, client


def status_of(result) -> str:
    from llmseg_ros.node import status_name

    return status_name(result.status)


def test_no_image_yet(lazy_node):
    node, client = lazy_node
    client.instruct("first", "the red ball")
    result = client.wait_result("first")
    assert status_of(result) == "NO_IMAGE", result.error
    assert "no image" in result.error
    assert result.instruction_text == "the red ball"
    assert result.mask.width == 0
    assert [t.stage for t in result.timings] == ["queue", "total"]  # it never reached the model
    # The service answers the same way when it is asked about the latest frame.
    assert status_of(client.segment("the red ball", instruction_id="srv-first")) == "NO_IMAGE"


@pytest.mark.parametrize(
    "text, reason",
    [("", "empty"), ("   \n\t ", "empty"), ("x" * 1001, "max_instruction_chars"), ("find the <SEG> now", "special token"),
     ("an <image> token", "special token")],
)
def test_bad_instruction(lazy_node, text, reason):
    node, client = lazy_node
    instruction_id = f"bad-text-{len(text)}-{reason}"
    client.instruct(instruction_id, text)
    result = client.wait_result(instruction_id)
    assert status_of(result) == "BAD_INSTRUCTION"
    assert reason in result.error


def test_string_topic_gets_a_node_assigned_id(lazy_node):
    node, client = lazy_node
    known = set(client.results)
    client.instruct_text("")
    result = client.wait_new_result(known)
    assert result.instruction_id.startswith("text-")
    assert status_of(result) == "BAD_INSTRUCTION"


def bad_images():
    rgb = np.zeros((48, 64, 3), np.uint8)

    def image(**fields):
        msg = rgb_image(rgb)
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    return {
        "32FC1": (image(encoding="32FC1"), "unsupported image encoding '32FC1'"),
        "upper_case": (image(encoding="RGB8"), "ROS spells it 'rgb8'"),
        "short_data": (image(data=bytes(64 * 3 * 48 - 10)), "expected step"),
        "small_step": (image(step=64 * 3 - 1, data=bytes((64 * 3 - 1) * 48)), "smaller than width"),
        "wrong_height": (image(height=50), "expected step"),
        "empty": (image(width=0, height=0, step=0, data=b""), "empty"),
        "odd_yuyv": (image(encoding="yuyv", width=63, step=126, data=bytes(126 * 48)), "even width"),
    }


@pytest.mark.parametrize("case", sorted(bad_images()))
def test_bad_image(lazy_node, case):
    node, client = lazy_node
    msg, reason = bad_images()[case]
    msg.header.stamp = stamp_now()
    client.publish_image(msg)
    client.instruct(f"bad-image-{case}", "the red ball")
    result = client.wait_result(f"bad-image-{case}")
    assert status_of(result) == "BAD_IMAGE", result.error
    assert reason in result.error
    assert result.status_name == "BAD_IMAGE"
    assert result.header.frame_id == "camera"  # the result names the frame it is about
    assert [t.stage for t in result.timings] == ["queue", "total"]  # refused before any decoding


def test_bad_image_is_reported_before_staleness(lazy_node):
    """An old frame that is also unusable is BAD_IMAGE: the fix is in the image, not the clock."""
    node, client = lazy_node
    msg = rgb_image(np.zeros((48, 64, 3), np.uint8), stamp=stamp_now(-10.0))
    msg.encoding = "32FC1"
    client.publish_image(msg)
    client.instruct("bad-and-old", "the red ball")
    result = client.wait_result("bad-and-old")
    assert status_of(result) == "BAD_IMAGE", result.error


def test_image_over_max_image_bytes(lazy_node):
    node, client = lazy_node
    assert client.set_parameters(max_image_bytes=1000)[0].successful
    try:
        client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8)))
        client.instruct("too-many-bytes", "the red ball")
        result = client.wait_result("too-many-bytes")
    finally:
        assert client.set_parameters(max_image_bytes=128 * 1024 * 1024)[0].successful
    assert status_of(result) == "BAD_IMAGE"
    assert "more than max_image_bytes=1000" in result.error


def test_oversized_image(lazy_node):
    node, client = lazy_node
    assert client.set_parameters(max_image_side=32)[0].successful
    try:
        client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8)))
        client.instruct("too-big", "the red ball")
        result = client.wait_result("too-big")
    finally:
        assert client.set_parameters(max_image_side=4096)[0].successful
    assert status_of(result) == "BAD_IMAGE"
    assert "max_image_side=32" in result.error


def test_stale_image(lazy_node):
    node, client = lazy_node
    client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8), stamp=stamp_now(-10.0)))
    client.instruct("stale", "the red ball")
    result = client.wait_result("stale")
    assert status_of(result) == "STALE_IMAGE"
    assert "max_image_age" in result.error
    assert result.header.stamp.sec > 0  # the header is the stale image's


def test_image_stamp_lookup(lazy_node):
    """An instruction can name its frame: a buffered one is found (this one is bad, so the answer
    needs no model and shows which frame was taken); one that left the buffer is stale; one between
    buffered frames that never arrived, or newer than all after image_stamp_wait, is missing."""
    node, client = lazy_node
    named = rgb_image(np.zeros((48, 64, 3), np.uint8), stamp=stamp_now(-0.2), frame_id="named")
    named.encoding = "32FC1"
    client.publish_image(named, settle=0.05)
    client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8), frame_id="newest"))
    client.instruct("by-stamp", "the red ball", image_stamp=named.header.stamp)
    client.instruct("too-old", "the red ball", image_stamp=stamp_now(-3600.0))
    client.instruct("never-sent", "the red ball", image_stamp=stamp_now(-0.1))
    client.instruct("future", "the red ball", image_stamp=stamp_now(3600.0))
    by_stamp = client.wait_result("by-stamp")
    assert status_of(by_stamp) == "BAD_IMAGE" and by_stamp.header.frame_id == "named", by_stamp.error
    too_old = client.wait_result("too-old")
    assert status_of(too_old) == "STALE_IMAGE" and "no longer buffered" in too_old.error
    never_sent = client.wait_result("never-sent")
    assert status_of(never_sent) == "NO_IMAGE" and "was received" in never_sent.error, never_sent.error
    future = client.wait_result("future")
    assert status_of(future) == "NO_IMAGE"
    assert "no frame with stamp" in future.error


def test_parameter_callback(lazy_node):
    node, client = lazy_node
    bad = client.set_parameters(**{"selection.iop_threshold": 1.5})[0]
    assert not bad.successful and "Max: 1.0" in bad.reason  # the descriptor's range
    assert not client.set_parameters(max_image_age=-1.0)[0].successful
    assert not client.set_parameters(**{"selection.max_instances": 0})[0].successful
    assert not client.set_parameters(**{"selection.iop_threshold": 5})[0].successful  # an int: our own check
    wrong_type = client.set_parameters(**{"selection.iop_threshold": "high"})[0]
    assert not wrong_type.successful and "must be a float" in wrong_type.reason
    assert client.set_parameters(**{"selection.iop_threshold": 0.7})[0].successful
    assert client.set_parameters(**{"selection.fallback_min_iop": 1})[0].successful  # an int is fine for a float
    at_one = client.set_parameters(**{"selection.iop_threshold": 1.0})[0]  # the rule keeps IoP above it: [0, 1)
    assert not at_one.successful and "[0.0, 1.0)" in at_one.reason
    assert client.set_parameters(**{"selection.fallback_min_iop": 0.2})[0].successful  # the preset's again
    assert client.set_parameters(**{"selection.iop_threshold": 0.5})[0].successful
    # Model parameters only change while unconfigured; startup ones never.
    busy = client.set_parameters(preset="paper")[0]
    assert not busy.successful and "cleanup" in busy.reason
    assert not client.set_parameters(autostart=False)[0].successful


def test_parameter_descriptors_carry_ranges(lazy_node):
    """What `ros2 param describe` and rqt show: description, range, read-only flag."""
    from rcl_interfaces.srv import DescribeParameters

    node, client = lazy_node
    names = ["selection.iop_threshold", "max_queue", "autostart", "preset"]
    described = client.call(client.describe_parameters_client, DescribeParameters.Request(names=names)).descriptors
    by_name = {d.name: d for d in described}
    threshold = by_name["selection.iop_threshold"]
    assert threshold.floating_point_range[0].from_value == 0.0 and threshold.floating_point_range[0].to_value == 1.0
    assert "preset" in threshold.additional_constraints and threshold.description
    assert by_name["max_queue"].integer_range[0].from_value == 1
    assert by_name["autostart"].read_only and not threshold.read_only
    assert "tiny, paper" in by_name["preset"].additional_constraints


def test_model_settings_default_to_the_preset(lazy_node):
    """One set of defaults: the node reports (and runs with) the tiny preset's selection and
    proposal settings, the fallback rule included, where nothing was set explicitly."""
    from llmseg_model.config import tiny_config
    from llmseg_ros.parameters import PRESET_PARAMETERS, preset_value

    node, client = lazy_node
    values = client.get_parameters(*PRESET_PARAMETERS)
    preset = tiny_config()
    for name in PRESET_PARAMETERS:
        assert values[name] == pytest.approx(preset_value(preset, name)), name
    assert values["selection.fallback_min_iop"] == pytest.approx(0.2)
    assert "fallback IoP >= 0.2" in node.log()


def test_every_instruction_is_answered_in_every_lifecycle_state(lazy_node):
    """Topic instructions, text instructions and service calls while inactive and unconfigured are
    answered NOT_ACTIVE, each exactly once."""
    node, client = lazy_node
    try:
        for state, transition in (("inactive", "deactivate"), ("unconfigured", "cleanup")):
            assert client.change_state(transition)
            assert client.state() == state
            known = set(client.results)
            client.instruct(f"topic-while-{state}", "the red ball")
            topic = client.wait_result(f"topic-while-{state}")
            assert status_of(topic) == "NOT_ACTIVE", topic.error
            client.instruct_text("the red ball")
            text = client.wait_new_result(known | {f"topic-while-{state}"})
            assert status_of(text) == "NOT_ACTIVE" and text.instruction_id.startswith("text-")
            service = client.segment("the red ball", instruction_id=f"srv-while-{state}")
            assert status_of(service) == "NOT_ACTIVE" and service.instruction_id == f"srv-while-{state}"
    finally:
        if client.state() == "unconfigured":
            assert client.change_state("configure")
        if client.state() == "inactive":
            assert client.change_state("activate")
    assert client.state() == "active"
    client.wait_connected()
    time.sleep(0.5)
    for state in ("inactive", "unconfigured"):
        assert len(client.results[f"topic-while-{state}"]) == 1


def test_bad_image_through_service(lazy_node):
    node, client = lazy_node
    image = rgb_image(np.zeros((48, 64, 3), np.uint8))
    image.encoding = "32FC1"
    result = client.segment("the red ball", image=image, instruction_id="srv-bad")
    assert status_of(result) == "BAD_IMAGE"
    assert result.instruction_id == "srv-bad"


def test_compressed_transport_after_reconfigure(lazy_node, tmp_path):
    """cleanup -> set a configure-time parameter -> configure -> activate, then CompressedImage input."""
    node, client = lazy_node
    assert client.change_state("deactivate")
    assert client.change_state("cleanup")
    assert client.state() == "unconfigured"
    assert client.set_parameters(image_transport="compressed")[0].successful
    assert not client.set_parameters(image_transport="h264")[0].successful
    assert client.change_state("configure")
    assert client.change_state("activate")
    client.wait_connected()
    try:
        from sensor_msgs.msg import CompressedImage

        broken = CompressedImage(format="jpeg")
        broken.header.stamp = stamp_now()
        broken.data = b"\xff\xd8 definitely not a jpeg"
        client.publish_image(broken)
        client.instruct("bad-jpeg", "the red ball")
        result = client.wait_result("bad-jpeg")
        assert status_of(result) == "BAD_IMAGE"
        assert "cannot decode compressed image" in result.error
    finally:
        assert client.change_state("deactivate")
        assert client.change_state("cleanup")
        assert client.set_parameters(image_transport="raw")[0].successful
        assert client.change_state("configure")
        assert client.change_state("activate")
        client.wait_connected()


def test_missing_weights(ros_env, tmp_path):
    """Missing weights: with lazy loading a frame that reaches the model is answered MODEL_ERROR;
    without it, configure fails cleanly (the node lives on, unconfigured) naming the setting to fix."""
    params = {"lazy_model_load": True, "weights.sam_checkpoint": str(tmp_path / "sam.pth")}
    with NodeProcess(ros_env, tmp_path / "node.log", params=params, namespace="/no_weights") as node, \
            RosClient(namespace="/no_weights") as client:
        client.wait_for_state("active")
        client.wait_connected()
        client.publish_image(rgb_image(np.full((64, 64, 3), 128, np.uint8)))
        client.instruct("needs-model", "the red ball")
        result = client.wait_result("needs-model", timeout=120)
        assert status_of(result) == "MODEL_ERROR"
        assert "weights.sam_checkpoint" in result.error  # names the setting to fix
        # /diagnostics says so: ERROR, with the reason
        client.wait_for(lambda: client.diagnostics and client.diagnostics[-1].level == b"\x02", 30,
                        "an ERROR on /diagnostics")
        status = client.diagnostics[-1]
        assert "weights.sam_checkpoint" in status.message
        assert client.diagnostic_values(status)["model"] == "failed to load"

        assert client.change_state("deactivate") and client.change_state("cleanup")
        assert client.set_parameters(lazy_model_load=False)[0].successful
        assert not client.change_state("configure", timeout=120)
        assert client.state() == "unconfigured"
        assert "configure failed: cannot load the tiny model" in node.log()
        assert node.process.poll() is None  # still alive, still answering lifecycle services
    assert node.process.returncode == 0


def test_bad_parameter_file_value_fails_configure_then_recovers(ros_env, tmp_path):
    """A bad value from the command line / params file fails configure with its reason; an integer
    where a float is expected is fine; after fixing the value, configure succeeds."""
    params = {"lazy_model_load": True, "selection.fallback_min_iop": 1, "max_image_age": -3.0}
    with NodeProcess(ros_env, tmp_path / "node.log", params=params, namespace="/bad_params") as node, \
            RosClient(namespace="/bad_params") as client:
        client.wait_for(lambda: "configure failed" in node.log(), 60, "the configure error in the log")
        assert "max_image_age must be in [0.0, 3600.0], got -3.0" in node.log()
        assert client.state() == "unconfigured"
        assert client.set_parameters(max_image_age=1.5)[0].successful
        assert client.change_state("configure") and client.change_state("activate")
        client.wait_connected()
        client.instruct("after-fix", "")
        assert status_of(client.wait_result("after-fix")) == "BAD_INSTRUCTION"
    assert node.process.returncode == 0


def test_image_qos_is_sensor_data_and_can_be_overridden(ros_env, tmp_path):
    """Best effort by default (the sensor-data profile); a qos_overrides parameter makes it reliable."""
    from rclpy.qos import ReliabilityPolicy

    topic = session_namespace("qos") + "/image"
    params = {"lazy_model_load": True, f"qos_overrides.{topic}.subscription.reliability": "reliable",
              f"qos_overrides.{topic}.subscription.depth": 2}
    with NodeProcess(ros_env, tmp_path / "node.log", params=params, namespace="/qos") as node, \
            RosClient(namespace="/qos") as client:
        client.wait_for_state("active")
        client.wait_connected(images=False)  # our best-effort image publisher cannot match a reliable reader
        client.wait_for(lambda: client.node.get_subscriptions_info_by_topic(topic), 30, "the image subscription")
        infos = client.node.get_subscriptions_info_by_topic(topic)
        assert [i.qos_profile.reliability for i in infos] == [ReliabilityPolicy.RELIABLE], node.log()
        name = f"qos_overrides.{topic}.subscription."  # the graph does not carry the depth: read it back
        assert client.get_parameters(name + "reliability", name + "depth") == {
            name + "reliability": "reliable", name + "depth": 2}
    with NodeProcess(ros_env, tmp_path / "default.log", params={"lazy_model_load": True},
                     namespace="/qos_default") as node, RosClient(namespace="/qos_default") as client:
        client.wait_for_state("active")
        client.wait_connected()
        infos = client.node.get_subscriptions_info_by_topic(session_namespace("qos_default") + "/image")
        assert [i.qos_profile.reliability for i in infos] == [ReliabilityPolicy.BEST_EFFORT]
