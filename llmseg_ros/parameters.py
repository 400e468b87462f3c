"""The node's parameters: one table with types, ranges, phases and where each default comes from.

Model settings (selection thresholds, SAM proposal filters, the instruction length) default to the
chosen preset's values, so the node and `LLMSeg.from_config(preset_config(...))` behave alike; a
value given on the command line, in a params file or with `ros2 param set` wins over the preset.
Every value is checked here (type, finiteness, range) before the node uses it: nothing a parameter
request carries may end the process or hang a call.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from llmseg_model.config import LLMSegConfig, preset_config

CONFIGURE = "configure"  # read on configure; rejected while configured (cleanup first)
RUNTIME = "runtime"  # change any time
STARTUP = "startup"  # read once at start (read-only)


@dataclass(frozen=True)
class Spec:
    """One parameter: its type (from the default), what it means, when it applies, its range."""

    name: str
    default: Any  # None: the preset's value (see preset_key); its type is `kind`
    description: str
    phase: str
    kind: type = str
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive, unless below_high
    below_high: bool = False  # the value must be below `high` (as the model's own check has it)
    choices: tuple[str, ...] = ()
    pattern: str = ""
    preset_key: str = ""  # "section.field" of LLMSegConfig that supplies the default

    def descriptor(self) -> ParameterDescriptor:
        """What `ros2 param describe` and rqt show: description, range, read-only flag."""
        descriptor = ParameterDescriptor(name=self.name, description=self.description, dynamic_typing=True)
        notes = {CONFIGURE: "takes effect on configure (cleanup first to change it)", STARTUP: "read at start only"}
        constraints = [notes.get(self.phase, "changes take effect at once")]
        if self.preset_key:
            constraints.append(f"default: the preset's {self.preset_key}")
        if self.choices:
            constraints.append("one of " + ", ".join(self.choices))
        if self.below_high:
            constraints.append(f"below {self.high}")
        descriptor.additional_constraints = "; ".join(constraints)
        descriptor.read_only = self.phase == STARTUP
        if self.kind is float and self.low is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.low), to_value=float(self.high))]
        elif self.kind is int and self.low is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(self.low), to_value=int(self.high), step=0)]
        return descriptor


def _f(name: str, default: float | None, low: float, high: float, description: str, phase: str = RUNTIME,
       preset_key: str = "") -> Spec:
    return Spec(name, default, description, phase, float, low, high, preset_key=preset_key)


def _i(name: str, default: int | None, low: int, high: int, description: str, phase: str = RUNTIME,
       preset_key: str = "") -> Spec:
    return Spec(name, default, description, phase, int, low, high, preset_key=preset_key)


SPECS: tuple[Spec, ...] = (
    # --- the model (configure)
    Spec("preset", "tiny", "model preset: tiny (shipped, CPU) or paper (LLaVA + SAM ViT-H + DINOv2 ViT-L)",
         CONFIGURE, choices=("tiny", "paper")),
    Spec("device", "cpu", "torch device: cpu, cuda, cuda:N, mps, or auto (cuda when available)", CONFIGURE,
         pattern=r"cpu|auto|mps|cuda(:\d{1,3})?"),
    Spec("weights.sam_checkpoint", "", "SAM checkpoint file; empty = the preset's", CONFIGURE),
    Spec("weights.dinov2_path", "", "DINOv2 model folder; empty = the preset's", CONFIGURE),
    Spec("weights.llava_path", "", "LLaVA model folder; empty = the preset's", CONFIGURE),
    Spec("weights.llmseg_weights", "", "folder with LLM-Seg's trained weights; empty = the preset's", CONFIGURE),
    _i("proposals.top_k", None, 1, 1000, "K, the SAM proposals kept per frame", CONFIGURE, "proposals.top_k"),
    Spec("proposals.sampling", None, "SAM everything-mode prompts: grid (the published dense grid) or refine (a "
         "coarse grid, then points where no kept mask is yet)", CONFIGURE, choices=("grid", "refine"),
         preset_key="proposals.sampling"),
    Spec("proposals.decoder", None, "SAM's mask decoder in everything mode: sam (segment-anything's own forward) or "
         "fused (the same function with the image-side work once per image; equal up to float rounding)",
         CONFIGURE, choices=("sam", "fused"), preset_key="proposals.decoder"),
    _i("proposals.points_per_side", None, 1, 128, "SAM everything-mode point grid side (refine: the coarse "
       "first grid)", CONFIGURE, "proposals.points_per_side"),
    _f("proposals.pred_iou_thresh", None, 0.0, 1.0, "SAM's predicted-IoU filter for proposals", CONFIGURE,
       "proposals.pred_iou_thresh"),
    _f("proposals.stability_score_thresh", None, 0.0, 1.0, "SAM's stability-score filter for proposals", CONFIGURE,
       "proposals.stability_score_thresh"),
    _f("proposals.box_nms_thresh", None, 0.0, 1.0, "box IoU above which SAM proposals are merged (1 = keep all)",
       CONFIGURE, "proposals.box_nms_thresh"),
    _i("num_threads", 0, 0, 1024, "torch CPU threads for inference; 0 = torch's default", CONFIGURE),
    Spec("lazy_model_load", False, "build the model on the first instruction instead of in configure", CONFIGURE,
         bool),
    # --- topics, buffers, queues (configure)
    Spec("image_transport", "raw", "raw: sensor_msgs/Image on `image`; compressed: CompressedImage on "
         "`image/compressed`", CONFIGURE, choices=("raw", "compressed")),
    _i("max_queue", 8, 1, 1000, "instructions waiting for the worker; more are answered QUEUE_FULL (queued "
       "instructions on one frame cost one batched query)", CONFIGURE),
    _i("max_track_goals", 8, 1, 64, "Track goals running at once; more end at once with QUEUE_FULL", CONFIGURE),
    Spec("use_depth", False, "subscribe to depth_image (16UC1 mm / 32FC1 m, aligned to the colour image) and "
         "depth_info (its CameraInfo) and put the target in 3D on every result", CONFIGURE, bool),
    _i("frame_buffer_size", 32, 1, 1000, "most frames kept for instructions that name an image_stamp (memory bound)",
       CONFIGURE),
    _f("frame_buffer_seconds", 1.0, 0.0, 60.0, "frames received within this many seconds of the newest are kept "
       "(up to frame_buffer_size)", CONFIGURE),
    _i("feature_cache_size", 2, 1, 100, "frames whose proposals and features are kept for further instructions",
       CONFIGURE),
    # --- runtime
    Spec("selection.iop_threshold", None, "IoP a proposal must exceed to be selected, in [0, 1)", RUNTIME, float,
         0.0, 1.0, below_high=True, preset_key="selection.iop_threshold"),
    _f("selection.fallback_min_iop", None, 0.0, 2.0, "if none passes, take the best IoU proposal when its "
       "IoP >= this (> 1: never)", preset_key="selection.fallback_min_iop"),
    _i("selection.max_instances", None, 1, 1000, "most instances in one result", preset_key="selection.max_instances"),
    _f("instances.iou_threshold", None, 0.01, 1.0, "selected proposals with a mask IoU at or above this are one "
       "object", preset_key="instances.iou_threshold"),
    _f("instances.containment_threshold", None, 0.01, 1.0, "a selected proposal this much inside another "
       "(intersection over the smaller) is part of the same object", preset_key="instances.containment_threshold"),
    _i("max_instruction_chars", None, 1, 100000, "longer instructions are BAD_INSTRUCTION",
       preset_key="vlm.max_instruction_chars"),
    _f("max_image_age", 2.0, 0.0, 3600.0, "seconds; the latest frame is STALE_IMAGE when older (0 = no limit)"),
    _f("image_stamp_tolerance", 0.005, 0.0, 10.0, "seconds; how close a frame's stamp must be to an "
       "instruction's image_stamp"),
    Spec("frame_binding", "arrival", "arrival: an instruction is about the newest frame when it arrives; worker: "
         "the newest when the worker takes it (the old behaviour)", RUNTIME, choices=("arrival", "worker")),
    _i("max_batch", 16, 1, 256, "most instructions on one frame answered in one batched query"),
    Spec("overlap_frame_stages", True, "on the CPU, compute DINOv2, the LLaVA image tokens and the prompt prefix on "
         "a second thread while SAM proposes (the same values, a frame sooner where a second core is free); false: "
         "one after the other on the worker thread", RUNTIME, bool),
    _f("depth_tolerance", 0.015, 0.0, 1.0, "seconds; a depth image pairs with the colour frame stamped within "
       "this of it"),
    _f("min_depth", 0.1, 0.0, 1000.0, "metres; nearer depth pixels are invalid"),
    _f("max_depth", 10.0, 0.0, 1000.0, "metres; farther depth pixels are invalid"),
    Spec("publish_points", True, "publish the target's 3D points on `points` (PointCloud2) while someone listens",
         RUNTIME, bool),
    Spec("publish_markers", True, "publish boxes and labels on `markers` (MarkerArray) while someone listens",
         RUNTIME, bool),
    _f("marker_lifetime", 1.0, 0.0, 3600.0, "seconds a marker stays in rviz without a new answer (0 = forever)"),
    Spec("standing_instructions", [], "instructions answered on new frames (at most standing_rate) while active, "
         "results on `result` with ids standing-0, standing-1, ...", RUNTIME, list, 0, 32),
    _f("standing_rate", 1.0, 0.0, 1000.0, "answers per second at most for standing_instructions (0 = every frame)"),
    _f("gil_switch_interval", 0.0002, 0.00001, 0.1, "seconds a Python thread runs before others may take the "
       "interpreter (sys.setswitchinterval, for the whole process; Python's default is 0.005). Inference holds the "
       "interpreter between torch calls; at 0.005 the image callbacks wait so long that best-effort frames are "
       "lost in transport"),
    _f("image_stamp_wait", 0.5, 0.0, 10.0, "seconds to wait for a frame named by an image_stamp newer than every "
       "frame received"),
    _i("max_image_side", 4096, 0, 65535, "images with a longer side are BAD_IMAGE (0 = no limit)"),
    _i("max_image_bytes", 128 * 1024 * 1024, 1, 2**31 - 1, "images (and compressed images) with more data bytes "
       "are BAD_IMAGE, checked before any copy"),
    _f("service_timeout", 120.0, 0.1, 3600.0, "seconds the segment service waits for its result"),
    Spec("publish_instance_labels", True, "fill instance_labels in results (one label image for all instances)",
         RUNTIME, bool),
    Spec("publish_overlay", True, "publish the tinted debug image on `overlay`", RUNTIME, bool),
    # --- startup
    Spec("autostart", True, "configure and activate at start (no lifecycle manager needed)", STARTUP, bool),
    _f("diagnostics_period", 1.0, 0.1, 60.0, "seconds between /diagnostics messages", STARTUP),
)
SPEC = {spec.name: spec for spec in SPECS}
PRESET_PARAMETERS = tuple(spec.name for spec in SPECS if spec.preset_key)


def coerce(name: str, value: Any) -> Any:
    """The value as its parameter's type (an integer is fine for a float); ValueError otherwise.

    Parameters are declared dynamically typed so that `iop_threshold: 1` in a YAML file is read as
    1.0 instead of failing at start; types are checked here instead.
    """
    kind = SPEC[name].kind
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    shown = "not set" if value is None else repr(value)
    raise ValueError(f"{name} must be {'an' if kind is int else 'a'} {kind.__name__}, got {shown}")


def valid_or_default(name: str, value: Any) -> Any:
    """The value when it passes `check`, else the parameter's default: for the settings read
    before configure (an executor size, a timer period), where a bad value must not end the node."""
    return value if check(name, value) is None else SPEC[name].default


def check(name: str, value: Any) -> str | None:
    """Why a value is unacceptable for a parameter of this table, or None when it is fine."""
    spec = SPEC[name]
    try:
        value = coerce(name, value)
    except ValueError as error:
        return str(error)
    if spec.kind is float and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if spec.kind is list:
        if len(value) > spec.high:
            return f"{name} holds at most {spec.high} entries, got {len(value)}"
        for item in value:
            if not item.strip():
                return f"{name} has an empty instruction"
        return None
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{name} must be in [{spec.low}, {spec.high}], got {value}"
    if spec.below_high and value >= spec.high:
        return f"{name} must be in [{spec.low}, {spec.high}), got {value}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        return f"{name} must be cpu, auto, mps, cuda or cuda:N; got {value!r}"
    return None


def preset_value(config: LLMSegConfig, name: str) -> Any:
    """The preset's value of a preset-derived parameter."""
    section, field = SPEC[name].preset_key.split(".")
    return getattr(getattr(config, section), field)


def apply_to_config(config: LLMSegConfig, values: dict[str, Any]) -> LLMSegConfig:
    """Write preset-derived parameter values and weight paths into a model config (in place)."""
    for name, value in values.items():
        spec = SPEC[name]
        if spec.preset_key:
            section, field = spec.preset_key.split(".")
            setattr(getattr(config, section), field, coerce(name, value))
        elif name.startswith("weights.") and value:
            setattr(config.weights, name.split(".", 1)[1], value)
    return config


class NodeParameters:
    """The table declared on a node: checked sets, runtime values for the worker, effective values.

    Remembers which preset-derived parameters were given explicitly (command line, params file,
    `ros2 param set`): the others follow the preset. A value refused at start (out of its range)
    leaves the default in place and fails configure with the reason until a good value is set.
    """

    def __init__(self, node: Node, configured: Callable[[], bool]) -> None:
        self._node = node
        self._configured = configured
        self._internal = threading.local()  # set while the node writes effective values itself
        self._lock = threading.Lock()  # runtime values between executor and worker threads
        self.runtime = {spec.name: spec.default for spec in SPECS if spec.phase == RUNTIME}
        self.explicit: set[str] = set()
        self.start_errors: dict[str, str] = {}
        self.listeners: list[Callable[[set[str]], None]] = []  # told which runtime values changed
        overrides = getattr(node, "_parameter_overrides", {})  # rclpy has no public accessor
        for spec in SPECS:
            try:
                parameter = node.declare_parameter(spec.name, spec.default, spec.descriptor())
            except Exception as error:  # out of the descriptor's range: keep the default, fail configure
                given = overrides.get(spec.name)
                reason = check(spec.name, given.value) if given is not None else None
                self.start_errors[spec.name] = f"{reason or error} (from the command line or params file)"
                parameter = node.declare_parameter(spec.name, spec.default, spec.descriptor(), ignore_override=True)
            if spec.preset_key and parameter.type_ != Parameter.Type.NOT_SET:
                self.explicit.add(spec.name)
        unknown = sorted(name for name in overrides
                         if name not in SPEC and name != "use_sim_time" and not name.startswith("qos_overrides."))
        if unknown:
            node.get_logger().warning(f"unknown parameters ignored (typo?): {', '.join(unknown)}")
        node.add_on_set_parameters_callback(self.on_set)

    def on_set(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """Runtime parameters change any time (checked); model parameters only while unconfigured."""
        internal = getattr(self._internal, "active", False)
        for parameter in parameter_list:
            spec = SPEC.get(parameter.name)
            if spec is None:  # rclpy's own (use_sim_time, qos_overrides.*): rclpy checks those
                continue
            if spec.phase == STARTUP:
                return SetParametersResult(successful=False, reason=f"{spec.name} is read at start only")
            if spec.phase == CONFIGURE and self._configured() and not internal:
                return SetParametersResult(
                    successful=False, reason=f"{spec.name} takes effect on configure: cleanup the node first"
                )
            error = check(spec.name, parameter.value)
            if error:
                return SetParametersResult(successful=False, reason=error)
        changed = set()
        with self._lock:
            for parameter in parameter_list:
                if parameter.name in self.runtime:
                    self.runtime[parameter.name] = coerce(parameter.name, parameter.value)
                    changed.add(parameter.name)
                if not internal and parameter.name in SPEC:
                    self.start_errors.pop(parameter.name, None)
                    if SPEC[parameter.name].preset_key:
                        self.explicit.add(parameter.name)
        for listener in self.listeners:
            listener(changed)
        return SetParametersResult(successful=True)

    def value(self, name: str) -> Any:
        """A parameter's value, checked and of its declared type; ValueError naming it otherwise."""
        if name in self.start_errors:
            raise ValueError(self.start_errors[name])
        value = self._node.get_parameter(name).value
        error = check(name, value)
        if error:
            raise ValueError(error)
        return coerce(name, value)

    def effective(self) -> dict[str, Any]:
        """Every parameter's value: the preset's for model settings not given explicitly."""
        preset = preset_config(self.value("preset"))
        return {
            spec.name: preset_value(preset, spec.name)
            if spec.preset_key and spec.name not in self.explicit else self.value(spec.name)
            for spec in SPECS
        }

    def publish_effective(self, values: dict[str, Any]) -> None:
        """Write the preset-derived values into the parameters, so `ros2 param get` shows what runs,
        and take the runtime ones."""
        shown = [Parameter(name, value=values[name]) for name in PRESET_PARAMETERS if name not in self.explicit]
        self._internal.active = True
        try:
            self._node.set_parameters(shown)
        finally:
            self._internal.active = False
        with self._lock:
            self.runtime = {name: values[name] for name in self.runtime}
        for listener in self.listeners:
            listener(set(self.runtime))

    def snapshot(self) -> dict[str, Any]:
        """The runtime values now (one consistent copy for one instruction)."""
        with self._lock:
            return dict(self.runtime)

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            return self.runtime[name]
