"""The node never dies and answers every instruction: each input that once ended the process or
lost an answer, sent from a separate process, then a seeded fuzz of every input at once.

The node runs with lazy_model_load and a SAM checkpoint that does not exist: nothing here needs a
model, and an instruction that does reach it is answered MODEL_ERROR at once.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from ros_helpers import active_node, requires_interfaces, rgb_image

pytestmark = [requires_interfaces, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def sturdy_node(ros_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    params = {"lazy_model_load": True, "weights.sam_checkpoint": str(folder / "missing_sam.pth")}
    with active_node(ros_env, folder / "node.log", params, namespace="/robust") as (node, client):
        yield node, client
    assert node.process.returncode == 0, node.log()[-3000:]


def alive(node, client, tag: str) -> None:
    """The process runs and still answers an instruction."""
    assert node.process.poll() is None, node.log()[-3000:]
    client.instruct(f"alive-{tag}", "")
    assert client.wait_result(f"alive-{tag}").status_name == "BAD_INSTRUCTION"


def test_negative_image_stamp(sturdy_node):
    """Used to kill the node (rclpy's Time raises on negative seconds)."""
    node, client = sturdy_node
    msg = rgb_image(np.zeros((48, 64, 3), np.uint8))
    msg.header.stamp.sec = -5
    client.publish_image(msg)
    client.instruct("after-negative-frame", "the red ball")
    result = client.wait_result("after-negative-frame")
    assert result.status_name == "BAD_IMAGE" and "negative" in result.error
    alive(node, client, "negative-image-stamp")


def test_negative_instruction_stamp(sturdy_node):
    """Used to kill the node with no result at all."""
    from builtin_interfaces.msg import Time

    node, client = sturdy_node
    client.instruct("negative-stamp", "the red ball", image_stamp=Time(sec=-1, nanosec=0))
    result = client.wait_result("negative-stamp")
    assert result.status_name == "BAD_INSTRUCTION" and "image_stamp is negative" in result.error
    alive(node, client, "negative-instruction-stamp")


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e10, -1.0, 0.0, 5])
def test_unusable_service_timeout_is_refused(sturdy_node, value):
    """inf was accepted and the next call killed the node; 1e10 made calls hang forever."""
    node, client = sturdy_node
    if value == 5:  # an integer is a fine number of seconds
        assert client.set_parameters(service_timeout=value)[0].successful
        assert client.set_parameters(service_timeout=120.0)[0].successful
    else:
        result = client.set_parameters(service_timeout=value)[0]
        assert not result.successful and "service_timeout" in result.reason
    assert client.get_parameters("service_timeout")["service_timeout"] == 120.0
    assert client.segment("the red ball", instruction_id=f"after-timeout-{value}").status_name in ("NO_IMAGE", "BAD_IMAGE")


def test_malformed_parameter_requests_do_not_end_the_node(sturdy_node):
    """A parameter value of an unknown type makes rclpy's own service raise ("11 is not a valid
    Parameter.Type"): the spin loop logs it and goes on. use_sim_time (KeyError in the node's
    callback once) is rclpy's to check; un-setting a node parameter is refused."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    node, client = sturdy_node
    broken = SetParameters.Request(parameters=[ParameterMsg(name="max_queue", value=ParameterValue(type=11))])
    future = client.set_parameters_client.call_async(broken)
    client.wait_for(lambda: "a callback raised" in node.log(), 30, "the node to log the failed request")
    assert not future.done() or future.result() is not None
    alive(node, client, "type-11")

    assert client.set_parameters(use_sim_time=True)[0].successful
    assert client.set_parameters(use_sim_time=False)[0].successful
    not_set = ParameterMsg(name="selection.iop_threshold", value=ParameterValue(type=ParameterType.PARAMETER_NOT_SET))
    refused = client.call(client.set_parameters_client, SetParameters.Request(parameters=[not_set])).results[0]
    assert not refused.successful
    assert client.set_parameters(**{"max_queue": 2**62})[0].successful is False
    alive(node, client, "parameters")


def test_large_service_request_is_refused_before_decoding(sturdy_node):
    """A request over max_image_bytes is answered BAD_IMAGE at once: never queued or decoded."""
    node, client = sturdy_node
    assert client.set_parameters(max_image_bytes=1_000_000)[0].successful
    try:
        big = rgb_image(np.zeros((1500, 2000, 3), np.uint8), frame_id="big_cam")  # 9 MB
        result = client.segment("the red ball", image=big, instruction_id="big", timeout=120)
    finally:
        assert client.set_parameters(max_image_bytes=128 * 1024 * 1024)[0].successful
    assert result.status_name == "BAD_IMAGE" and "max_image_bytes=1000000" in result.error
    assert result.header.frame_id == "big_cam"
    assert [t.stage for t in result.timings] == ["total"]  # answered before the queue


def test_old_frames_are_reported(sturdy_node):
    """When frames stop arriving, an answer on the last one says so in the log (throttled)."""
    node, client = sturdy_node
    for _ in range(10):  # a 10 Hz stream, then silence
        client.publish_image(rgb_image(np.zeros((48, 64, 3), np.uint8)), settle=0.1)
    time.sleep(1.0)
    client.instruct("late-frame", "the red ball")
    assert client.wait_result("late-frame").status_name == "MODEL_ERROR"  # it reached the (missing) model
    client.wait_for(lambda: "newer frames are not arriving" in node.log(), 10, "the warning in the log")


# ----------------------------------------------------------------------------------------------- fuzz

ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "rgba16", "yuv422", "yuyv", "nv12", "bayer_rggb8", "bayer_grbg16",
             "RGB8", "32FC1", "", "jpeg", "8UC3", "rgb8 ", "\u00e9ncoding"]


def fuzz_image(rng: random.Random):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.encoding = rng.choice(ENCODINGS)
    msg.width = rng.choice([0, 1, 2, 63, 64, 4097, 2**31, rng.randrange(0, 200)])
    msg.height = rng.choice([0, 1, 2, 48, 70000, rng.randrange(0, 200)])
    msg.step = rng.choice([0, msg.width, msg.width * 3, msg.width * 2 + 1, 2**32 - 1, rng.randrange(0, 600)]) % 2**32
    size = rng.choice([0, 1, msg.step * msg.height if msg.step * msg.height < 200_000 else 17, rng.randrange(0, 50_000)])
    msg.data = rng.randbytes(size)
    msg.is_bigendian = rng.random() < 0.5
    msg.header.stamp.sec = rng.choice([0, -1, -(2**31), 2**31 - 1, int(time.time()), int(time.time()) - 100])
    msg.header.stamp.nanosec = rng.choice([0, 999_999_999, 2**32 - 1])
    msg.header.frame_id = rng.choice(["", "camera", "\u2603" * 50])
    return msg


def fuzz_text(rng: random.Random) -> str:
    return rng.choice(["", " ", "the red ball", "<SEG>", "<image> the ring", "x" * 5000, "\u00fc\u4e2d\u2603 ball",
                       "\t\n", "a" * rng.randrange(0, 1200), "the thing\rI could roll"])


def fuzz_parameter(rng: random.Random):
    """A parameter message of a random name and a random (often wrong) type and value."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterValue

    from llmseg_ros.parameters import SPEC

    name = rng.choice([*SPEC, "use_sim_time", "qos_overrides./image.subscription.depth", "no_such_parameter"])
    value = ParameterValue()
    kind = rng.randrange(0, 10)
    if kind == 0:
        value.type, value.bool_value = 1, rng.random() < 0.5
    elif kind in (1, 2):
        value.type, value.integer_value = 2, rng.choice([0, -1, 1, 3, 2**62, -(2**63), 100000])
    elif kind in (3, 4):
        value.type, value.double_value = 3, rng.choice([0.0, 0.3, -0.5, 1.01, math.inf, -math.inf, math.nan, 1e308])
    elif kind == 5:
        value.type, value.string_value = 4, rng.choice(["", "tiny", "paper", "cuda:99", "compressed", "\u2603"])
    elif kind == 6:
        value.type, value.byte_array_value = 5, [b"\x00", b"\xff"]
    elif kind == 7:
        value.type, value.integer_array_value = 7, [1, 2]
    elif kind == 8:
        value.type = 0  # NOT_SET: undeclare
    else:
        value.type = 11  # not a parameter type at all
    return ParameterMsg(name=name, value=value)


def test_seeded_fuzz_of_every_input(sturdy_node):
    """Random images, instructions, text, service calls, parameter requests and lifecycle
    transitions, interleaved: the node stays up and every instruction gets exactly one result."""
    from lifecycle_msgs.srv import ChangeState
    from rcl_interfaces.srv import SetParameters
    from std_msgs.msg import String

    from llmseg_interfaces.msg import Instruction
    from llmseg_interfaces.srv import Segment

    node, client = sturdy_node
    rng = random.Random(15)
    sent: list[str] = []
    auto = 0  # instructions without an id: the node names them
    calls = []
    transitions = {"active": "deactivate", "inactive": rng.choice(["activate", "cleanup"]), "unconfigured": "configure"}
    known = set(client.results)
    for step in range(260):
        kind = rng.random()
        if kind < 0.25:
            client.image_pub.publish(fuzz_image(rng))
        elif kind < 0.6:
            instruction_id = rng.choice([f"fuzz-{step}", ""])
            msg = Instruction(id=instruction_id, text=fuzz_text(rng))
            msg.image_stamp.sec = rng.choice([0, 0, -1, int(time.time()), 2**31 - 1])
            msg.image_stamp.nanosec = rng.choice([0, 2**32 - 1])
            client.instruction_pub.publish(msg)
            if instruction_id:
                sent.append(instruction_id)
            else:
                auto += 1
        elif kind < 0.7:
            client.text_pub.publish(String(data=fuzz_text(rng)))
            auto += 1
        elif kind < 0.76:
            request = Segment.Request(text=fuzz_text(rng), id=f"fuzz-srv-{step}")
            if rng.random() < 0.7:
                request.image = fuzz_image(rng)
            calls.append((request.id, client.segment_client.call_async(request)))
        elif kind < 0.96:
            request = SetParameters.Request(parameters=[fuzz_parameter(rng) for _ in range(rng.randrange(1, 3))])
            client.set_parameters_client.call_async(request)  # type 11 gets no response: not waited for
        else:
            request = ChangeState.Request()
            request.transition.label = transitions.get(client.state(), "configure")
            transitions["inactive"] = rng.choice(["activate", "cleanup"])
            client.change_state_client.call_async(request)
        time.sleep(0.02)
    assert node.process.poll() is None, node.log()[-5000:]

    client.wait_for(lambda: all(client.results.get(i) for i in sent), 120, "a result for every fuzz instruction")
    client.wait_for(lambda: len(set(client.results) - known - set(sent)) >= auto, 60, "the nameless instructions' results")
    client.wait_for(lambda: all(future.done() for _, future in calls), 120, "every service response")
    time.sleep(1.0)
    assert all(len(client.results[i]) == 1 for i in sent), "an instruction was answered twice"
    for request_id, future in calls:
        assert future.result().result.instruction_id == request_id
    statuses = {r.status_name for i in sent for r in client.results[i]}
    assert "NOT_ACTIVE" in statuses and "BAD_INSTRUCTION" in statuses, statuses
    # What escaped a callback was only rclpy's own parameter service failing on type 11; the
    # node's callbacks never failed.
    log = node.log()
    assert log.count("a callback raised") == log.count("is not a valid Parameter.Type"), log[-5000:]
    assert "failed; the node goes on" not in log
    # Back to active for whatever runs next.
    for _ in range(3):
        state = client.state()
        if state == "active":
            break
        if state == "unconfigured":
            client.set_parameters(preset="tiny", device="cpu", image_transport="raw", lazy_model_load=True)
        client.change_state({"unconfigured": "configure", "inactive": "activate"}[state])
    alive(node, client, "fuzz")
