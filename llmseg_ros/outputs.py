"""What the node publishes with each answer: the result itself, and the mask, overlay, point cloud
and rviz markers, each only while someone subscribes (they cost a copy or a render each)."""

from __future__ import annotations

import collections
from typing import Any

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros import conversions, spatial
from llmseg_ros.frames import Frame

RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
DEBUG_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
POINTS_QOS = DEBUG_IMAGE_QOS
MARKER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
MARKER_NAMESPACES = 256  # instruction ids whose marker counts are remembered (to delete stale markers)


class Outputs:
    """The node's result, mask, overlay, points and markers publishers."""

    def __init__(self, node: Node) -> None:
        self._result = node.create_publisher(SegmentationResult, "result", RESULT_QOS)
        self._mask = node.create_publisher(Image, "mask", DEBUG_IMAGE_QOS)
        self._overlay = node.create_publisher(Image, "overlay", DEBUG_IMAGE_QOS)
        self._points = node.create_publisher(PointCloud2, "points", POINTS_QOS)
        self._markers = node.create_publisher(MarkerArray, "markers", MARKER_QOS)
        # markers drawn per instruction id, so the next answer deletes the ones it no longer has
        self._marker_counts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def result(self, result: SegmentationResult) -> None:
        """An answer to a topic instruction (or a standing one from the parameter)."""
        self._result.publish(result)

    def extras(self, result: SegmentationResult, rgb: Any, labels: Any, union: Any, frame: Frame,
               settings: dict[str, Any]) -> None:
        """mask, overlay, points and markers of an OK answer: each only while someone subscribes
        (points and markers only for a frame paired with depth, which only `use_depth` subscribes to)."""
        if self._mask.get_subscription_count():
            self._mask.publish(result.mask)
        if settings["publish_overlay"] and self._overlay.get_subscription_count():
            self._overlay.publish(conversions.rgb_to_image(conversions.overlay(rgb, labels), result.header))
        if frame.depth is None:
            return
        if union is not None and settings["publish_points"] and self._points.get_subscription_count():
            depth_shape = (int(frame.depth.msg.height), int(frame.depth.msg.width))
            self._points.publish(spatial.point_cloud(union, labels, depth_shape, frame.depth.header))
        if settings["publish_markers"] and self._markers.get_subscription_count():
            previous = self._marker_counts.pop(result.instruction_id, 0)
            array = spatial.markers(result, previous, settings["marker_lifetime"])
            self._marker_counts[result.instruction_id] = sum(m.action == m.ADD for m in array.markers)
            while len(self._marker_counts) > MARKER_NAMESPACES:
                self._marker_counts.popitem(last=False)
            if array.markers:
                self._markers.publish(array)
