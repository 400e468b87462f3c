"""Procedural reasoning-segmentation scenes: flat-coloured objects and instructions about them.

The tiny preset has no ReasonSeg to learn from offline, so this generator makes scenes whose
instructions need the same kinds of reasoning: attributes (colour, category, size), spatial
relations, superlatives and everyday function ("something to keep a door open"), with single- and
multi-instance targets. Every single-target instruction is checked to match exactly one object.
Everything is a pure function of (config.seed, split, index), so data sets never need storing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llmseg_model.data.sample import SegSample

logger = logging.getLogger(__name__)

CATEGORIES = ("ball", "box", "wedge", "ring", "bar")
PLURALS = {"ball": "balls", "box": "boxes", "wedge": "wedges", "ring": "rings", "bar": "bars"}
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 55, 175),
    "orange": (245, 125, 25),
}
SIZES = ("small", "medium", "large")
# Half-extent of an object as a fraction of the image's short side.
SIZE_SCALES = {"small": 0.06, "medium": 0.095, "large": 0.14}
SPLITS = {"train": 0, "val": 1, "test": 2}

# Everyday functions, so instructions can name a use instead of the object.
# clauses complete "the thing that ..."; needs are first-person situations.
FUNCTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "ball": {
        "clauses": ("could roll across the floor", "I could throw to a friend", "a dog would chase"),
        "needs": ("I want to play catch", "I want something that rolls across the floor"),
    },
    "box": {
        "clauses": ("I could store things in", "could hold my toys", "I could pack things into"),
        "needs": ("I need somewhere to store things", "I have to put away some toys"),
    },
    "wedge": {
        "clauses": ("could keep a door open", "I could slide under a door to hold it", "could stop a wheel from rolling"),
        "needs": ("I need to keep the door open", "I want to stop the cart from rolling away"),
    },
    "ring": {
        "clauses": ("I could wear on a finger", "could be a piece of jewellery", "I could put on my hand"),
        "needs": ("I want to wear some jewellery", "I need something to put on my finger"),
    },
    "bar": {
        "clauses": ("could pry a lid open", "I could use as a lever", "could reach under the sofa"),
        "needs": ("I need to pry this lid open", "I need a lever"),
    },
}

NOUNS = ("object", "thing")  # category-free nouns
SINGLE_TEMPLATES = (
    "{np}",
    "Segment {np}.",
    "Find {np}.",
    "Show me {np}.",
    "Please highlight {np}.",
    "Where is {np}?",
    "Can you point out {np}?",
    "Which one is {np}?",
)
MULTI_TEMPLATES = (
    "{np}",
    "Segment {np}.",
    "Find {np}.",
    "Show me {np}.",
    "Please highlight {np}.",
    "Where are {np}?",
    "Can you point out {np}?",
)
NEED_SINGLE_TEMPLATES = (
    "{need}; which object helps?",
    "{need}. Which thing should I use?",
    "{need}, what here would work?",
    "{need}. Can you find me something for that?",
)
NEED_MULTI_TEMPLATES = (
    "{need}; show me every object that would work.",
    "{need}. Which things could I use? Show all of them.",
)
RELATIONS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
SUPERLATIVES = {
    "largest": ("largest", "biggest"),
    "smallest": ("smallest", "tiniest"),
    "leftmost": ("leftmost",),
    "rightmost": ("rightmost",),
    "topmost": ("topmost", "highest"),
    "bottommost": ("bottom-most", "lowest"),
}
KINDS = ("attribute", "function", "relation", "superlative", "multi")


@dataclass
class ProceduralConfig:
    """Size and content of procedural scenes."""

    height: int = 256
    width: int = 256
    min_objects: int = 3
    max_objects: int = 6
    instructions_per_scene: int = 4
    seed: int = 0
    noise_std: float = 4.0  # pixel noise over the whole image
    gradient: float = 20.0  # peak-to-peak brightness change of the background gradient
    gap: int = 6  # minimum pixels between objects
    multi_fraction: float = 0.25  # share of instructions that target several objects
    # Relative weights of single-target kinds: attribute, function, relation, superlative.
    kind_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.height < 64 or self.width < 64:
            raise ValueError(f"ProceduralConfig: image must be at least 64x64, got {self.width}x{self.height}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"ProceduralConfig: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects > 12:
            raise ValueError(f"ProceduralConfig: max_objects must be <= 12, got {self.max_objects}")
        if self.instructions_per_scene < 1:
            raise ValueError(f"ProceduralConfig: instructions_per_scene must be >= 1, got {self.instructions_per_scene}")
        if not 0.0 <= self.multi_fraction <= 1.0:
            raise ValueError(f"ProceduralConfig: multi_fraction must be in [0, 1], got {self.multi_fraction}")


@dataclass
class SceneObject:
    """One object of a scene, with what instructions may say about it."""

    category: str
    colour: str
    size: str
    center: tuple[float, float]  # (x, y) pixels
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive) pixels
    area: int


@dataclass
class Instruction:
    text: str
    targets: tuple[int, ...]  # indices into Scene.objects
    kind: str  # one of KINDS


@dataclass
class Scene:
    """A rendered scene with its instance masks, object attributes and instructions."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) uint8 in {0, 1}, non-overlapping
    objects: list[SceneObject]
    instructions: list[Instruction] = field(default_factory=list)

    def target_mask(self, targets: Sequence[int]) -> np.ndarray:
        """(H, W) uint8 union of the given objects' masks."""
        mask = np.zeros(self.image.shape[:2], np.uint8)
        for index in targets:
            mask |= self.masks[index]
        return mask

    def instance_map(self) -> np.ndarray:
        """(H, W) uint8: 0 background, i + 1 for object i."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for i, mask in enumerate(self.masks):
            out[mask > 0] = i + 1
        return out


# ----------------------------------------------------------------------------------------------
# Rendering


def _shape_mask(category: str, half: float, angle: float, height: int, width: int, cx: float, cy: float) -> np.ndarray:
    """Rasterise one shape centred at (cx, cy) into a full (H, W) bool mask."""
    reach = int(math.ceil(_bounding_radius(category, half))) + 2  # work only near the shape
    x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
    y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = _shape_window(category, half, angle, x0, x1, y0, y1, cx, cy)
    return mask


def _shape_window(
    category: str, half: float, angle: float, x0: int, x1: int, y0: int, y1: int, cx: float, cy: float
) -> np.ndarray:
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    if category == "ball":
        return dx * dx + dy * dy <= half * half
    if category == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= half * half) & (r2 >= (0.55 * half) ** 2)
    # Convex polygons: rotate the pixel grid into the shape's frame.
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if category == "box":
        side = half * 0.85
        return (np.abs(u) <= side) & (np.abs(v) <= side)
    if category == "bar":
        return (np.abs(u) <= half * 1.6) & (np.abs(v) <= half * 0.32)
    if category == "wedge":
        # Triangle with vertices (-h, h*0.8), (h, h*0.8), (-h, -h*0.9): a door-stop wedge profile.
        verts = np.array([[-half, 0.75 * half], [half, 0.75 * half], [-half, -0.95 * half]], np.float32)
        inside = np.ones_like(u, dtype=bool)
        for i in range(3):
            (x0, y0), (x1, y1) = verts[i], verts[(i + 1) % 3]
            inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) <= 0
        return inside
    raise ValueError(f"unknown category {category!r}")


def _bounding_radius(category: str, half: float) -> float:
    return {"ball": 1.0, "ring": 1.0, "box": 1.21, "bar": 1.64, "wedge": 1.38}[category] * half


def _render(config: ProceduralConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    height, width = config.height, config.width
    short = min(height, width)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[tuple[float, float, float]] = []  # cx, cy, radius
    objects: list[SceneObject] = []
    masks: list[np.ndarray] = []
    for _ in range(count):
        category = str(rng.choice(CATEGORIES))
        colour = str(rng.choice(list(COLOURS)))
        size = str(rng.choice(SIZES))
        for _attempt in range(60):
            half = SIZE_SCALES[size] * short * float(rng.uniform(0.92, 1.08))
            radius = _bounding_radius(category, half)
            if 2 * radius + 4 >= short:
                size = SIZES[max(0, SIZES.index(size) - 1)]
                continue
            cx = float(rng.uniform(radius + 2, width - radius - 2))
            cy = float(rng.uniform(radius + 2, height - radius - 2))
            if all(math.hypot(cx - x, cy - y) > radius + r + config.gap for x, y, r in placed):
                break
            if _attempt % 20 == 19 and size != "small":  # crowded: try a smaller object
                size = SIZES[SIZES.index(size) - 1]
        else:
            continue  # no room left; the scene gets fewer objects
        angle = float(rng.uniform(0, 2 * math.pi))
        if category == "box":
            angle = float(rng.uniform(-0.3, 0.3))
        mask = _shape_mask(category, half, angle, height, width, cx, cy)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        placed.append((cx, cy, radius))
        masks.append(mask)
        objects.append(
            SceneObject(
                category=category,
                colour=colour,
                size=size,
                center=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                area=int(len(xs)),
            )
        )

    # Light background with a linear gradient and a slight tint.
    base = rng.uniform(200, 240) + rng.uniform(-8, 8, size=3)
    direction = rng.uniform(-1, 1, size=2)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (direction[0] * (xs / width - 0.5) + direction[1] * (ys / height - 0.5)) * config.gradient
    image = base[None, None, :] + ramp[..., None]
    for obj, mask in zip(objects, masks):
        colour = np.array(COLOURS[obj.colour], np.float32) + rng.uniform(-12, 12, size=3)
        image[mask] = colour
    image = image + rng.normal(0.0, config.noise_std, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    stacked = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), np.uint8)
    return image, stacked, objects


# ----------------------------------------------------------------------------------------------
# Descriptions and instructions


@dataclass(frozen=True)
class _Descriptor:
    """A set of attribute constraints and how to say it."""

    size: str | None = None
    colour: str | None = None
    category: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.category is None or obj.category == self.category)
        )

    def phrase(self, rng: np.random.Generator, plural: bool = False, superlative: str = "") -> str:
        """Noun phrase without article: '[superlative] [size] [colour] noun'."""
        words = [superlative] if superlative else []
        if self.size:
            words.append(self.size)
        if self.colour:
            words.append(self.colour)
        if self.category:
            words.append(PLURALS[self.category] if plural else self.category)
        else:
            noun = str(rng.choice(NOUNS))
            words.append(noun + "s" if plural else noun)
        return " ".join(words)


def _descriptors(obj: SceneObject) -> list[_Descriptor]:
    """Every descriptor that fits obj (from plain 'object' to size + colour + category)."""
    out = []
    for size in (None, obj.size):
        for colour in (None, obj.colour):
            for category in (None, obj.category):
                out.append(_Descriptor(size, colour, category))
    return out


def _all_descriptors(objects: list[SceneObject]) -> list[_Descriptor]:
    seen: dict[_Descriptor, None] = {}
    for obj in objects:
        for d in _descriptors(obj):
            seen.setdefault(d, None)
    return list(seen)


def _matching(objects: list[SceneObject], descriptor: _Descriptor) -> list[int]:
    return [i for i, obj in enumerate(objects) if descriptor.matches(obj)]


def _unique_reference(objects: list[SceneObject], index: int, rng: np.random.Generator) -> str | None:
    """Shortest-ish descriptor naming only objects[index], as 'the ...'; None if none exists."""
    options = [d for d in _descriptors(objects[index]) if _matching(objects, d) == [index]]
    if not options:
        return None
    fewest = min(_n_fields(d) for d in options)
    short = [d for d in options if _n_fields(d) <= fewest + 1]
    return "the " + short[int(rng.integers(len(short)))].phrase(rng)


def _n_fields(d: _Descriptor) -> int:
    return sum(x is not None for x in (d.size, d.colour, d.category))


def _strictly(a: SceneObject, b: SceneObject, relation: str, margin: float) -> bool:
    """a is fully on the `relation` side of b (bounding boxes separated)."""
    if relation == "left":
        return a.bbox[2] + margin < b.bbox[0]
    if relation == "right":
        return a.bbox[0] > b.bbox[2] + margin
    if relation == "above":
        return a.bbox[3] + margin < b.bbox[1]
    return a.bbox[1] > b.bbox[3] + margin


def _loosely(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """a's centre is on the `relation` side of b's centre (what a reader might accept)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[relation]


def _sentence(template: str, np_text: str) -> str:
    text = template.format(np=np_text)
    return text[0].upper() + text[1:]


def _candidates(objects: list[SceneObject], image_size: tuple[int, int], rng: np.random.Generator) -> dict[str, list[Instruction]]:
    """All instructions of each kind this scene supports, with checked targets."""
    height, width = image_size
    out: dict[str, list[Instruction]] = {kind: [] for kind in KINDS}
    n = len(objects)
    descriptors = _all_descriptors(objects)

    # Attribute descriptions: single when unique; multi when they fit >= 2 and not all objects.
    for d in descriptors:
        hits = _matching(objects, d)
        if len(hits) == 1 and _n_fields(d) > 0:
            template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
            out["attribute"].append(Instruction(_sentence(template, "the " + d.phrase(rng)), tuple(hits), "attribute"))
        elif len(hits) >= 2 and _n_fields(d) > 0:
            template = MULTI_TEMPLATES[int(rng.integers(len(MULTI_TEMPLATES)))]
            np_text = str(rng.choice(("all the ", "every one of the ", "all "))) + d.phrase(rng, plural=True)
            out["multi"].append(Instruction(_sentence(template, np_text), tuple(hits), "multi"))

    # Function: the category is what the instruction implies; narrow by size / colour if needed.
    for category in sorted({o.category for o in objects}):
        hits = [i for i, o in enumerate(objects) if o.category == category]
        spec = FUNCTIONS[category]
        clause = str(rng.choice(spec["clauses"]))
        need = str(rng.choice(spec["needs"]))
        if len(hits) == 1:
            if rng.random() < 0.5:
                template = NEED_SINGLE_TEMPLATES[int(rng.integers(len(NEED_SINGLE_TEMPLATES)))]
                text = template.format(need=need)
            else:
                template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
                noun = str(rng.choice(("something", "the thing", "the object")))
                text = _sentence(template, f"{noun} that {clause}")
            out["function"].append(Instruction(text, tuple(hits), "function"))
            continue
        if rng.random() < 0.5:
            template = NEED_MULTI_TEMPLATES[int(rng.integers(len(NEED_MULTI_TEMPLATES)))]
            text = template.format(need=need)
        else:
            template = MULTI_TEMPLATES[int(rng.integers(len(MULTI_TEMPLATES)))]
            text = _sentence(template, f"{rng.choice(('all the', 'every one of the'))} things that {clause}")
        out["multi"].append(Instruction(text, tuple(hits), "multi"))
        for attr in ("colour", "size"):
            values = [getattr(objects[i], attr) for i in hits]
            for i, value in zip(hits, values):
                if values.count(value) == 1:
                    template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
                    text = _sentence(template, f"the {value} thing that {clause}")
                    out["function"].append(Instruction(text, (i,), "function"))

    # Relations: '<descriptor> <relation> <unique reference>'.
    margin = 0.01 * min(height, width)
    for ref in range(n):
        ref_text = _unique_reference(objects, ref, rng)
        if ref_text is None:
            continue
        for relation, words in RELATIONS.items():
            for d in descriptors:
                pool = [i for i in _matching(objects, d) if i != ref]
                strict = [i for i in pool if _strictly(objects[i], objects[ref], relation, margin)]
                loose = [i for i in pool if _loosely(objects[i], objects[ref], relation)]
                if not strict or set(loose) != set(strict):
                    continue  # empty, or some other candidate is borderline: ambiguous
                rel = str(rng.choice(words))
                if len(strict) == 1:
                    np_text = f"the {d.phrase(rng)} {rel} {ref_text}"
                    template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
                    out["relation"].append(Instruction(_sentence(template, np_text), tuple(strict), "relation"))
                elif _n_fields(d) <= 1:
                    np_text = f"all the {d.phrase(rng, plural=True)} {rel} {ref_text}"
                    template = MULTI_TEMPLATES[int(rng.integers(len(MULTI_TEMPLATES)))]
                    out["multi"].append(Instruction(_sentence(template, np_text), tuple(strict), "multi"))

    # Superlatives among a descriptor's matches, only with a clear winner.
    for d in descriptors:
        pool = _matching(objects, d)
        if len(pool) < 2:
            continue
        for name, words in SUPERLATIVES.items():
            if d.size is not None and name in ("largest", "smallest"):
                continue  # "the largest small ball" reads as a contradiction
            winner = _clear_extreme(objects, pool, name, image_size)
            if winner is None:
                continue
            np_text = "the " + d.phrase(rng, superlative=str(rng.choice(words)))
            template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
            out["superlative"].append(Instruction(_sentence(template, np_text), (winner,), "superlative"))
    return out


def _clear_extreme(objects: list[SceneObject], pool: list[int], name: str, image_size: tuple[int, int]) -> int | None:
    """Index in pool that is the extreme by a clear margin, else None."""
    height, width = image_size
    if name in ("largest", "smallest"):
        values = [objects[i].area for i in pool]
        order = np.argsort(values)
        if name == "largest":
            best, second = order[-1], order[-2]
            return pool[best] if values[best] >= 1.4 * values[second] else None
        best, second = order[0], order[1]
        return pool[best] if values[second] >= 1.4 * values[best] else None
    axis, sign, span = {
        "leftmost": (0, 1, width),
        "rightmost": (0, -1, width),
        "topmost": (1, 1, height),
        "bottommost": (1, -1, height),
    }[name]
    values = [sign * objects[i].center[axis] for i in pool]
    order = np.argsort(values)
    best, second = order[0], order[1]
    return pool[best] if values[second] - values[best] >= 0.08 * span else None


def _choose(candidates: dict[str, list[Instruction]], config: ProceduralConfig, rng: np.random.Generator) -> list[Instruction]:
    """Pick instructions_per_scene distinct instructions, mixing kinds and targets."""
    single_kinds = [k for k in KINDS if k != "multi"]
    weights = np.asarray(config.kind_weights, np.float64)
    chosen: list[Instruction] = []
    used_texts: set[str] = set()
    used_targets: dict[tuple[int, ...], int] = {}
    for _ in range(config.instructions_per_scene):
        want_multi = rng.random() < config.multi_fraction
        kinds = ["multi"] if want_multi and candidates["multi"] else []
        available = [k for k in single_kinds if candidates[k]]
        if available:
            w = np.array([weights[single_kinds.index(k)] for k in available])
            order = rng.choice(len(available), size=len(available), replace=False, p=w / w.sum())
            kinds += [available[i] for i in order]
        kinds += [k for k in KINDS if candidates[k] and k not in kinds]
        pick = None
        for kind in kinds:
            pool = [c for c in candidates[kind] if c.text not in used_texts]
            if not pool:
                continue
            # Prefer targets not asked about yet.
            fewest = min(used_targets.get(c.targets, 0) for c in pool)
            pool = [c for c in pool if used_targets.get(c.targets, 0) == fewest]
            pick = pool[int(rng.integers(len(pool)))]
            break
        if pick is None:
            break
        chosen.append(pick)
        used_texts.add(pick.text)
        used_targets[pick.targets] = used_targets.get(pick.targets, 0) + 1
    return chosen


def render_scene(config: ProceduralConfig, seed: Sequence[int] | int) -> Scene:
    """A scene without instructions (cheaper), for pretraining the backbones."""
    image, masks, objects = _render(config, np.random.default_rng(np.random.SeedSequence(seed)))
    return Scene(image=image, masks=masks, objects=objects)


def generate_scene(config: ProceduralConfig, seed: Sequence[int] | int) -> Scene:
    """One scene with exactly config.instructions_per_scene instructions, a pure function of seed."""
    root = np.random.SeedSequence(seed)
    for attempt in range(50):
        rng = np.random.default_rng(root.spawn(1)[0] if attempt else root)
        image, masks, objects = _render(config, rng)
        if not objects:
            continue
        instructions = _choose(_candidates(objects, (config.height, config.width), rng), config, rng)
        if len(instructions) == config.instructions_per_scene:
            return Scene(image=image, masks=masks, objects=objects, instructions=instructions)
    raise RuntimeError(f"could not generate a scene with {config.instructions_per_scene} instructions for seed {seed}")


# ----------------------------------------------------------------------------------------------
# Data set


class ProceduralDataset(Sequence):
    """`size` scenes of a split, flattened into one SegSample per (scene, instruction).

    len(dataset) == size * config.instructions_per_scene; sample i is instruction
    i % instructions_per_scene of scene i // instructions_per_scene. Splits use disjoint seed
    streams, so train, val and test never share a scene.
    """

    def __init__(self, split: str, size: int, config: ProceduralConfig | None = None, cache_size: int = 16) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.split = split
        self.num_scenes = size
        self.config = config or ProceduralConfig()
        self._cache: OrderedDict[int, Scene] = OrderedDict()
        self._cache_size = max(1, cache_size)
        # Instructions are a few hundred bytes a scene and are all a sample needs until its image
        # or mask is read, so they are kept for every scene seen: drawing samples in random order
        # then never re-renders a scene whose pixels a training memo already holds.
        self._instructions: dict[int, list[Instruction]] = {}

    def __len__(self) -> int:
        return self.num_scenes * self.config.instructions_per_scene

    def scene(self, index: int) -> Scene:
        """The full scene `index` (0 <= index < size); recent scenes are cached."""
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene index {index} out of range for {self.num_scenes} scenes")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        scene = generate_scene(self.config, (self.config.seed, SPLITS[self.split], index))
        self._cache[index] = scene
        self._instructions[index] = scene.instructions
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return scene

    def scene_id(self, index: int) -> str:
        return f"{self.split}/{index:06d}"

    def instructions(self, index: int) -> list[Instruction]:
        """The instructions of scene `index`, rendering the scene only the first time."""
        if index not in self._instructions:
            self.scene(index)
        return self._instructions[index]

    def _position(self, index: int) -> tuple[int, int]:
        """(scene index, instruction number) of sample `index`; negative indices count from the end."""
        if isinstance(index, slice):
            raise TypeError("ProceduralDataset does not support slicing; index samples one at a time")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return divmod(index, self.config.instructions_per_scene)

    def _instruction(self, index: int) -> tuple[int, Instruction]:
        """(scene index, instruction) of sample `index`."""
        scene_index, k = self._position(index)
        return scene_index, self.instructions(scene_index)[k]

    def __getitem__(self, index: int) -> SegSample:  # type: ignore[override]
        scene_index, instruction = self._instruction(index)
        return SegSample(
            image_id=self.scene_id(scene_index),
            texts=[instruction.text],
            load_image=_loader(self, scene_index, None),
            load_mask=_loader(self, scene_index, instruction.targets),
            source="procedural",
        )

    def image_of(self, index: int) -> tuple[str, str, Callable[[], np.ndarray]]:
        """(source, image id, image loader) of sample `index` without generating its scene, so the
        proposal precompute skips cached and other-shard images without rendering them."""
        scene_index = self._position(index)[0]
        return "procedural", self.scene_id(scene_index), _loader(self, scene_index, None)

    def group(self, index: int) -> str:
        """Reasoning kind of a sample (attribute, function, relation, superlative, multi), so the
        benchmark reports which kinds of instruction the model gets right."""
        return self._instruction(index)[1].kind

    def write(self, out_dir: str | Path) -> Path:
        """Write the split as images/<id>.png, instances/<id>.png (0 bg, i+1 object i) and
        <split>.json with objects and instructions. Returns the JSON path."""
        from PIL import Image
        from tqdm import tqdm

        out = Path(out_dir)
        (out / "images" / self.split).mkdir(parents=True, exist_ok=True)
        (out / "instances" / self.split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in tqdm(range(self.num_scenes), desc=f"writing {self.split}", unit="scene"):
            scene = self.scene(i)
            scene_id = self.scene_id(i)
            Image.fromarray(scene.image).save(out / "images" / f"{scene_id}.png")
            Image.fromarray(scene.instance_map()).save(out / "instances" / f"{scene_id}.png")
            records.append(
                {
                    "image_id": scene_id,
                    "image": f"images/{scene_id}.png",
                    "instances": f"instances/{scene_id}.png",
                    "objects": [asdict(o) for o in scene.objects],
                    "instructions": [asdict(x) for x in scene.instructions],
                }
            )
        path = out / f"{self.split}.json"
        path.write_text(json.dumps({"config": asdict(self.config), "scenes": records}, indent=1) + "\n")
        logger.info("wrote %d scenes to %s", self.num_scenes, out)
        return path


def _loader(dataset: ProceduralDataset, scene_index: int, targets: tuple[int, ...] | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        scene = dataset.scene(scene_index)
        return scene.image.copy() if targets is None else scene.target_mask(targets)

    return load


def vocabulary_texts() -> list[str]:
    """Every word and phrase the generator can emit, for fitting a word-level tokenizer."""
    texts: list[str] = []
    templates = (*SINGLE_TEMPLATES, *MULTI_TEMPLATES, *NEED_SINGLE_TEMPLATES, *NEED_MULTI_TEMPLATES)
    texts += [t.replace("{np}", " ").replace("{need}", " ") for t in templates]
    texts += list(CATEGORIES) + list(PLURALS.values()) + list(COLOURS) + list(SIZES)
    texts += list(NOUNS) + [n + "s" for n in NOUNS]
    texts += ["the", "all the", "all", "every one of the", "something", "the thing", "the object", "that", "things"]
    for spec in FUNCTIONS.values():
        texts += list(spec["clauses"]) + list(spec["needs"])
    for words in (*RELATIONS.values(), *SUPERLATIVES.values()):
        texts += list(words)
    return texts


def main(argv: list[str] | None = None) -> None:
    """CLI: write procedural splits to disk as PNG + JSON."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=sorted(SPLITS))
    parser.add_argument("--size", type=int, default=100, help="scenes per split")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = ProceduralConfig(height=args.height, width=args.width, seed=args.seed)
    for split in args.splits:
        ProceduralDataset(split, args.size, config).write(args.out)


if __name__ == "__main__":
    main()
