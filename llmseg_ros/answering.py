"""The worker thread's half of the node: a queued instruction in, exactly one result out.

`BatchRunner.process` takes the oldest queued instruction, finds its frame, takes every other
queued instruction about the same frame, runs one `LLMSeg.prepare` (or reuses the frame's cached
features) and one `LLMSeg.query_batch`, and answers each with its own timings. `Replies` is the one
way out for every result, the node's status results included: counted for /diagnostics, failures
logged, a standing instruction's result dropped once its task has ended, and a failed delivery
logged instead of raised. Nothing here creates ROS entities; the node wires these to its own.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros import batching, diagnostics, results, spatial
from llmseg_ros.batching import Job, Member
from llmseg_ros.frames import NS, Frame, FrameStore, Pick
from llmseg_ros.standing import StandingTasks
from llmseg_ros.worker import Worker


def job_status(job: Job, status: int, error: str, frame: Frame | None = None) -> SegmentationResult:
    """A result for `job` that carries only a status (and its frame's header when it has one)."""
    return results.status_result(job.id, job.text, status, error, frame.header if frame is not None else None)


class Replies:
    """Delivers results: every instruction's one result leaves through `send`."""

    def __init__(self, logger: Any, stats: diagnostics.Stats, standing: StandingTasks) -> None:
        self._logger = logger
        self._stats = stats
        self._standing = standing

    def answer(self, member: Member, result: SegmentationResult) -> None:
        """Reply to a batch member with its own timings (total: from its arrival to now)."""
        member.stages["total"] = time.monotonic() - member.job.received
        result.timings = results.timings(member.stages)
        member.replied = True
        self.send(member.job, result)

    def send(self, job: Job, result: SegmentationResult) -> None:
        """Count, log and deliver `result`; a delivery that fails is logged, never raised."""
        if not result.timings:
            result.timings = results.timings({"total": time.monotonic() - job.received})
        self._stats.result(result)
        if result.status not in (SegmentationResult.OK, SegmentationResult.EMPTY):
            message = f"instruction {job.id!r}: status {result.status_name}: {result.error}"
            if job.standing is not None:  # answered again on every frame: say it now and then
                self._logger.warning(message, throttle_duration_sec=5.0)
            else:
                self._logger.warning(message)
        if job.standing is not None and not self._standing.finished(job.standing, result):
            return  # the standing instruction ended while this was in flight
        try:
            job.reply(result)
        except Exception as error:  # e.g. the context is already shut down
            self._logger.error(f"could not deliver the result of {job.id!r}: {error!r}")


@dataclass(eq=False)
class BatchRunner:
    """Answers the worker's jobs in batches (one per frame). Built on each configure, with that
    configuration's frame store and depth setting."""

    frames: FrameStore
    runtime: Callable[[], dict[str, Any]]  # the runtime parameter values now (NodeParameters.snapshot)
    replies: Replies
    extras: Callable[..., None]  # publish an answer's mask, overlay, points, markers (Outputs.extras)
    stats: diagnostics.Stats
    logger: Any
    use_depth: bool
    now_ns: Callable[[], int]  # ROS time now
    load_model: Callable[[], tuple[Any, str]]  # (the model, or None and why not)
    queue: Callable[[], Worker[Job] | None]  # the worker whose queue holds the companions
    schedule_standing: Callable[[Frame | None], None]  # queue the standing instructions due on a frame

    def process(self, head: Job) -> None:
        """Answer the oldest queued instruction together with every queued one on the same frame;
        each member gets exactly one result, whatever fails."""
        members: list[Member] = []
        try:
            self._run(head, members)
        except Exception as error:  # never let one batch take the node down
            self.logger.error(f"instruction {head.id!r} (batch of {max(len(members), 1)}) failed:\n"
                              f"{traceback.format_exc()}")
            if not members:
                members.append(Member(head, {"queue": time.monotonic() - head.received}))
            for member in members:
                if not member.replied:
                    self.replies.answer(member, job_status(member.job, SegmentationResult.MODEL_ERROR, repr(error)))
        try:
            self.schedule_standing(self.frames.buffer.newest())
        except Exception:
            self.logger.error(f"standing instructions could not be scheduled:\n{traceback.format_exc()}")

    def _run(self, head: Job, members: list[Member]) -> None:
        runtime = self.runtime()
        taken = time.monotonic()
        members.append(Member(head, {"queue": taken - head.received}))
        pick = self._resolve(head, runtime)
        if pick.status:
            self.replies.answer(members[0], job_status(head, pick.status, pick.error, pick.frame))
            return
        if pick.late:
            self.logger.warning(f"instruction {head.id!r}: {pick.late}", throttle_duration_sec=10.0)
        frame, cached = pick.frame, pick.cached
        members += self._companions(head, frame, runtime, runtime["max_batch"] - 1, taken)

        def fail_all(status: int, error: str) -> None:
            for member in members:
                if not member.replied:
                    self.replies.answer(member, job_status(member.job, status, error, frame))

        start = time.monotonic()
        if cached is None:
            try:
                rgb = batching.decode(frame.msg, runtime)
            except ValueError as invalid:
                return fail_all(SegmentationResult.BAD_IMAGE, str(invalid))
        else:
            rgb = cached.rgb
        decode = time.monotonic() - start
        model, why_not = self.load_model()
        if model is None:
            return fail_all(SegmentationResult.MODEL_ERROR, why_not)
        if cached is None:
            try:
                features = model.prepare(rgb, overlap=None if runtime["overlap_frame_stages"] else False)
            except ValueError as invalid:
                return fail_all(SegmentationResult.BAD_IMAGE, str(invalid))
        else:
            features = cached.features
        for member in members:
            member.stages["decode"] = decode
            if cached is None:
                member.stages.update(features.timings)
        self.frames.remember(frame, features, rgb)
        # Instructions on this frame that arrived during its proposal pass join the batch.
        late = self._companions(head, frame, runtime, runtime["max_batch"] - len(members), time.monotonic())
        for member in late:
            member.joined_late = True
        members += [m for m in late if not m.replied]

        batching.apply_runtime(model, runtime)
        live = [m for m in members if not m.replied]
        answers, batch = batching.query_jobs(model, features, [m.job for m in live])
        if batch:
            self.stats.batch(batch, cached is None)
        for member, answer in zip(live, answers):
            job = member.job
            if isinstance(answer, str):
                self.replies.answer(member, job_status(job, SegmentationResult.BAD_INSTRUCTION, answer, frame))
                continue
            if isinstance(answer, ValueError):
                self.replies.answer(member, job_status(job, SegmentationResult.MODEL_ERROR, str(answer), frame))
                continue
            member.stages.update({k: v for k, v in answer.timings.items() if k not in features.timings})
            result = job_status(job, SegmentationResult.OK, "", frame)
            result.frame_cached = cached is not None or member.joined_late
            result.batch_size = batch
            labels = results.fill_answer(result, answer, frame.header, runtime["publish_instance_labels"])
            union = spatial.place(result, answer, frame, self.frames, runtime, member.stages) if self.use_depth else None
            self.replies.answer(member, result)
            self.extras(result, rgb, labels, union, frame, runtime)

    def _resolve(self, job: Job, runtime: dict[str, Any]) -> Pick:
        """The frame a job is about: its own image, the newest frame when it arrived, the frame its
        stamp names, or the newest frame now."""
        if job.image is not None:
            return Pick(job.image)
        if job.bound_ns is not None:
            return self.frames.choose(job.bound, runtime, job.bound_ns)
        return self.frames.pick(job.image_stamp_ns, runtime, self.now_ns())

    def _companions(self, head: Job, frame: Frame, runtime: dict[str, Any], limit: int, taken: float) -> list[Member]:
        """Queued jobs about the same frame (up to limit), taken out of the queue; those that fail
        the frame's checks for their own arrival time are answered here."""
        queue = self.queue()
        if head.image is not None or frame.seq is None or limit <= 0 or queue is None:
            return []
        newest = self.frames.buffer.newest() is frame
        tolerance = int(runtime["image_stamp_tolerance"] * NS)

        def joins(job: Job) -> bool:
            if job.image is not None:
                return False
            if job.bound_ns is not None:
                return job.bound is frame
            if job.image_stamp_ns:
                return abs(job.image_stamp_ns - frame.stamp_ns) <= tolerance
            return newest  # bound when taken: the newest frame, which this one is

        members = []
        for job in queue.take(joins, limit):
            member = Member(job, {"queue": taken - job.received})
            members.append(member)
            if job.bound_ns is not None:
                pick = self.frames.choose(frame, runtime, job.bound_ns)
            elif job.image_stamp_ns:
                pick = Pick(frame)
            else:
                pick = self.frames.choose(frame, runtime, self.now_ns())
            if pick.status:
                self.replies.answer(member, job_status(job, pick.status, pick.error, frame))
        return members
