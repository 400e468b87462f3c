"""Which objects of an image a question may target, and the text scene summary the LLM reads.

Selection works on whole categories: a category is listed with all of its instances or not at all,
so an answer like "all the cups" is always the complete set of cups the image has annotated. It runs
in two steps so SAM (for box-only sets) only runs on objects that can be used: `plan_objects` picks
categories from the annotations alone; `build_scene` keeps those whose masks came out non-empty
and writes the summary.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pycocotools import mask as mask_utils

from llmseg_model.datagen.annotations import Category, ImageRecord, ObjectAnnotation, union_rle
from llmseg_model.datagen.config import SelectionConfig


@dataclass
class ObjectPlan:
    """Categories picked for an image, most important first, before masks exist."""

    bucket: str  # "simple" or "complex"
    category_ids: list[int]
    objects: list[ObjectAnnotation]  # every instance of those categories


@dataclass
class SceneObject:
    key: str  # short id the LLM answers with, e.g. "obj3"
    annotation: ObjectAnnotation
    category: Category
    area_fraction: float
    position: str  # e.g. "top left"
    size: str  # "tiny" / "small" / "medium" / "large"


@dataclass
class Scene:
    """An image with its listed objects and the summary shown to the LLM."""

    image: ImageRecord
    bucket: str
    objects: list[SceneObject]
    summary: str

    def object(self, key: str) -> SceneObject | None:
        for obj in self.objects:
            if obj.key == key:
                return obj
        return None

    def instances_of(self, category_id: int) -> list[SceneObject]:
        return [o for o in self.objects if o.category.id == category_id]

    def answer_rle(self, keys: list[str]) -> dict:
        """Union RLE of the given objects (all must exist)."""
        return union_rle([self.object(k).annotation.rle for k in keys])


def image_bucket(num_categories: int, config: SelectionConfig) -> str | None:
    """LLM-Seg40K's split of LVIS images: 2-5 categories are "simple", 6 or more "complex"."""
    if num_categories < config.min_categories:
        return None
    return "simple" if num_categories <= config.simple_max_categories else "complex"


def plan_objects(image: ImageRecord, categories: dict[int, Category], config: SelectionConfig) -> ObjectPlan | str:
    """Pick the categories to list; returns a rejection reason (str) when the image is unusable."""
    image_area = float(image.height * image.width)
    if image_area <= 0:
        return "bad_image_size"
    by_category: dict[int, list[ObjectAnnotation]] = defaultdict(list)
    for obj in image.objects:
        by_category[obj.category_id].append(obj)
    importance = {}
    for category_id, objects in by_category.items():
        if config.skip_not_exhaustive and category_id in image.not_exhaustive:
            continue
        if len(objects) > config.max_instances_per_category:
            continue
        largest = max(o.box_area for o in objects) / image_area
        if largest < config.min_area_fraction:
            continue
        score = largest
        if _is_main(image, categories[category_id], objects):
            score += config.main_category_boost
        importance[category_id] = score
    bucket = image_bucket(len(importance), config)
    if bucket is None:
        return "too_few_categories"
    ranked = sorted(importance, key=lambda c: (-importance[c], c))[: config.max_listed_categories]
    objects = [o for c in ranked for o in sorted(by_category[c], key=lambda o: (-o.box_area, o.id))]
    return ObjectPlan(bucket=bucket, category_ids=ranked, objects=objects)


def _is_main(image: ImageRecord, category: Category, objects: list[ObjectAnnotation]) -> bool:
    if image.main_category and image.main_category.lower() == category.name.lower():
        return True
    return any(o.instance_id and o.instance_id in image.main_instance_ids for o in objects)


def build_scene(
    image: ImageRecord, plan: ObjectPlan, categories: dict[int, Category], config: SelectionConfig
) -> Scene | str:
    """Keep planned categories whose every instance has a non-empty mask; number them obj1, obj2..."""
    image_area = float(image.height * image.width)
    complete = [c for c in plan.category_ids if all(o.rle is not None for o in plan.objects if o.category_id == c)]
    if len(complete) < config.min_categories:
        return "too_few_masked_categories"
    objects = []
    for category_id in complete:
        for obj in (o for o in plan.objects if o.category_id == category_id):
            fraction = float(mask_utils.area(obj.rle)) / image_area
            objects.append(
                SceneObject(
                    key=f"obj{len(objects) + 1}",
                    annotation=obj,
                    category=categories[category_id],
                    area_fraction=fraction,
                    position=position_words(obj.bbox, image.width, image.height),
                    size=size_word(fraction),
                )
            )
    scene = Scene(image=image, bucket=plan.bucket, objects=objects, summary="")
    scene.summary = scene_summary(scene)
    return scene


def position_words(bbox: tuple[float, float, float, float], width: int, height: int) -> str:
    """Where the box centre falls on a 3x3 grid: "top left", "center", "bottom right"..."""
    cx = (bbox[0] + bbox[2] / 2) / max(width, 1)
    cy = (bbox[1] + bbox[3] / 2) / max(height, 1)
    vertical = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    if vertical == "middle" and horizontal == "center":
        return "center"
    return f"{vertical} {horizontal}"


def size_word(fraction: float) -> str:
    if fraction < 0.01:
        return "tiny"
    if fraction < 0.05:
        return "small"
    if fraction < 0.2:
        return "medium"
    return "large"


def scene_summary(scene: Scene) -> str:
    """Plain-text description of the image built from its annotations (and captions, if given)."""
    image = scene.image
    lines = [f"Image: {image.width}x{image.height} pixels ({scene.bucket} scene, {image.source})."]
    for caption in image.captions[:3]:
        lines.append(f"Caption: {caption}")
    lines.append("Annotated objects, grouped by category (ids are what answers refer to):")
    seen = []
    for obj in scene.objects:
        if obj.category.id in seen:
            continue
        seen.append(obj.category.id)
        instances = scene.instances_of(obj.category.id)
        label = obj.category.display_name
        if obj.category.definition:
            label += f" ({obj.category.definition})"
        others = [s for s in obj.category.synonyms if s.lower() != obj.category.name.lower()]
        if others:
            label += f"; also called: {', '.join(others[:4])}"
        count = "1 instance" if len(instances) == 1 else f"{len(instances)} instances"
        lines.append(f"- {label} - {count}:")
        for inst in instances:
            lines.append(f"  - {inst.key}: {inst.position}, {inst.size} ({100 * inst.area_fraction:.1f}% of the image)")
    return "\n".join(lines)
