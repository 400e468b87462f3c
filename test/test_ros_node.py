"""The llmseg node in its own process, driven over DDS from this one: lifecycle, parameters and
every status that needs no model (no frame yet, bad encoding, size/step mismatch, empty or
oversized text, stale frame, not active). The node runs with lazy_model_load, so none of this
depends on trained weights; configure's failure on missing weights is tested without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from ros_helpers import NodeProcess, RosClient, requires_interfaces, rgb_image, ros_env, stamp_now  # noqa: F401

pytestmark = [requires_interfaces, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lazy_node(ros_env, tmp_path_factory):
    """One active node (lazy model load, so no weights needed) and a client talking to it."""
    log = tmp_path_factory.mktemp("ros") / "node.log"
    with NodeProcess(ros_env, log, params={"lazy_model_load": True}) as node, RosClient() as client:
        try:
            client.wait_for_state("active")
            client.wait_connected()
        except TimeoutError:
            pytest.fail(f"node did not come up; its log:\n{node.log()}")
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
    [("", "empty"), ("   \n\t ", "empty"), ("x" * 1001, "max_instruction_chars"), ("find the <SEG> now", "special token")],
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
    unknown = rgb_image(rgb)
    unknown.encoding = "yuv422"
    short_data = rgb_image(rgb)
    short_data.data = bytes(short_data.data)[:-10]
    small_step = rgb_image(rgb)
    small_step.step = 64 * 3 - 1
    small_step.data = bytes(small_step.data)[: small_step.step * 48]
    wrong_height = rgb_image(rgb)
    wrong_height.height = 50
    empty = rgb_image(rgb)
    empty.width = empty.height = empty.step = 0
    empty.data = b""
    return {
        "yuv422": (unknown, "unsupported image encoding"),
        "short_data": (short_data, "expected step"),
        "small_step": (small_step, "smaller than width"),
        "wrong_height": (wrong_height, "expected step"),
        "empty": (empty, "empty"),
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
    assert result.header.frame_id == "camera"  # the result names the frame it is about


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
    """An instruction can name its frame; one no longer buffered is stale, one never seen is missing."""
    node, client = lazy_node
    client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8)))
    client.instruct("too-old", "the red ball", image_stamp=stamp_now(-3600.0))
    client.instruct("future", "the red ball", image_stamp=stamp_now(3600.0))
    assert status_of(client.wait_result("too-old")) == "STALE_IMAGE"
    future = client.wait_result("future")
    assert status_of(future) == "NO_IMAGE"
    assert "no frame with stamp" in future.error


def test_parameter_callback(lazy_node):
    node, client = lazy_node
    bad = client.set_parameters(**{"selection.iop_threshold": 1.5})[0]
    assert not bad.successful and "[0, 1]" in bad.reason
    assert not client.set_parameters(max_image_age=-1.0)[0].successful
    assert not client.set_parameters(**{"selection.max_instances": 0})[0].successful
    wrong_type = client.set_parameters(**{"selection.iop_threshold": "high"})[0]
    assert not wrong_type.successful
    assert client.set_parameters(**{"selection.iop_threshold": 0.7})[0].successful
    assert client.set_parameters(**{"selection.iop_threshold": 0.5})[0].successful
    # Model parameters only change while unconfigured.
    busy = client.set_parameters(preset="paper")[0]
    assert not busy.successful and "cleanup" in busy.reason


def test_deactivate_then_service_says_not_active(lazy_node):
    node, client = lazy_node
    assert client.change_state("deactivate")
    assert client.state() == "inactive"
    try:
        result = client.segment("the red ball", instruction_id="while-inactive")
        assert status_of(result) == "NOT_ACTIVE"
        assert result.instruction_id == "while-inactive"
    finally:
        assert client.change_state("activate")
    assert client.state() == "active"
    client.wait_connected()


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
    params = {"lazy_model_load": True, "selection.iop_threshold": 1, "max_image_age": -3.0}
    with NodeProcess(ros_env, tmp_path / "node.log", params=params, namespace="/bad_params") as node, \
            RosClient(namespace="/bad_params") as client:
        client.wait_for(lambda: "configure failed" in node.log(), 60, "the configure error in the log")
        assert "max_image_age must be >= 0" in node.log()
        assert client.state() == "unconfigured"
        assert client.set_parameters(max_image_age=1.5)[0].successful
        assert client.change_state("configure") and client.change_state("activate")
        client.wait_connected()
        client.instruct("after-fix", "")
        assert status_of(client.wait_result("after-fix")) == "BAD_INSTRUCTION"
    assert node.process.returncode == 0
