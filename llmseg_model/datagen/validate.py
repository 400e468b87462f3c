"""Checks every question the LLM wrote before it becomes a training sample.

A question is kept only when its answer objects exist in the scene, their union mask is non-empty,
it does not name an answer's category (unless allowed), and it is not a repeat. Every rejection
is counted by reason for the run report.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from llmseg_model.datagen.annotations import Category, rle_area
from llmseg_model.datagen.config import PromptConfig
from llmseg_model.datagen.selection import Scene


@dataclass
class QAPair:
    question: str
    answer: str
    object_keys: list[str]
    rle: dict  # pycocotools RLE of the union of the answer objects


def normalize_question(text: str) -> str:
    """Lower-case words only, so trivial variants count as duplicates."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _term_pattern(term: str) -> str:
    words = [re.escape(w) for w in term.split()]
    last = term.split()[-1]
    forms = [re.escape(last), re.escape(last) + "(?:s|es)"]
    if last.endswith("y"):
        forms.append(re.escape(last[:-1]) + "ies")
    if last.endswith("fe"):
        forms.append(re.escape(last[:-2]) + "ves")
    elif last.endswith("f"):
        forms.append(re.escape(last[:-1]) + "ves")
    head = r"[\s\-]+".join(words[:-1])
    tail = "(?:" + "|".join(forms) + ")"
    return r"\b" + (head + r"[\s\-]+" if head else "") + tail + r"\b"


def mentions_category(text: str, category: Category) -> bool:
    """Whether `text` names the category (name, synonym or bare name, singular or plural)."""
    lowered = text.lower()
    return any(re.search(_term_pattern(term), lowered) for term in category.mention_terms if term)


def validate_items(
    items: list, scene: Scene, config: PromptConfig, seen: set[str], limit: int
) -> tuple[list[QAPair], Counter]:
    """Accepted pairs (at most `limit`) and a Counter of rejection reasons. `seen` is updated."""
    accepted: list[QAPair] = []
    rejected: Counter = Counter()
    for item in items:
        reason, pair = _check(item, scene, config, seen)
        if reason is None and len(accepted) >= limit:
            reason = "surplus"
        if reason is not None:
            rejected[reason] += 1
            continue
        seen.add(normalize_question(pair.question))
        accepted.append(pair)
    return accepted, rejected


def _check(item, scene: Scene, config: PromptConfig, seen: set[str]) -> tuple[str | None, QAPair | None]:
    if not isinstance(item, dict):
        return "bad_item", None
    question, answer, objects = item.get("question"), item.get("answer", ""), item.get("objects")
    if not isinstance(question, str) or not isinstance(answer, str) or not isinstance(objects, list):
        return "bad_item", None
    question, answer = " ".join(question.split()), " ".join(answer.split())
    if not config.min_question_chars <= len(question) <= config.max_question_chars:
        return "question_length", None
    keys = []
    for key in objects:
        if not isinstance(key, str):
            return "unknown_object", None
        key = key.strip().lower()
        if scene.object(key) is None:
            return "unknown_object", None
        if key not in keys:
            keys.append(key)
    if not keys:
        return "no_objects", None
    if len(keys) > config.max_answer_objects:
        return "too_many_objects", None
    rle = scene.answer_rle(keys)
    if rle_area(rle) == 0:
        return "empty_mask", None
    if not config.allow_category_names:
        for key in keys:
            if mentions_category(question, scene.object(key).category):
                return "names_category", None
    if normalize_question(question) in seen:
        return "duplicate", None
    return None, QAPair(question=question, answer=answer, object_keys=keys, rle=rle)
