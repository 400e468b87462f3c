"""Question writers: any OpenAI-compatible chat endpoint, or deterministic offline templates.

Both return the raw reply text, so their output goes through the same parser and validator. The
OpenAI backend owns transport robustness (shared rate limit, timeouts, retries with exponential
backoff and jitter, Retry-After); deciding whether a reply is usable is the generator's job.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol

from llmseg_model.datagen.config import BackendConfig, PromptConfig
from llmseg_model.datagen.selection import Scene, SceneObject
from llmseg_model.datagen.validate import mentions_category

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A failure that retrying cannot fix (bad key, unknown model, bad request): stops the run."""


class TransientBackendError(RuntimeError):
    """Every retry of one request failed; the image is left for a later run."""

    def __init__(self, message: str, completion: "Completion") -> None:
        super().__init__(message)
        self.completion = completion


@dataclass
class Completion:
    """One reply and what it took to get it."""

    text: str | None = None
    requests: int = 0  # HTTP requests sent
    retries: int = 0
    errors: Counter = field(default_factory=Counter)  # transport errors by kind
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend(Protocol):
    def complete(self, scene: Scene, messages: list[dict]) -> Completion: ...


class RateLimiter:
    """Spaces requests at least 60/rpm seconds apart across all threads; 0 rpm means no limit."""

    def __init__(
        self,
        requests_per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self.sleep(wait)
        return wait

    def hold_off(self, seconds: float) -> None:
        """Push every later slot back, e.g. after a 429 with Retry-After."""
        with self._lock:
            self._next = max(self._next, self.clock() + seconds)


class OpenAIBackend:
    """Chat completions from any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp...)."""

    def __init__(self, config: BackendConfig, limiter: RateLimiter | None = None, seed: int = 0) -> None:
        import openai

        self.config = config
        self.limiter = limiter or RateLimiter(config.requests_per_minute)
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env, "")
            if not api_key:
                raise ValueError(
                    f"backend.api_key_env: environment variable {config.api_key_env} is not set "
                    "(set it, or set api_key_env to an empty string for a server that needs no key)"
                )
        else:
            api_key = "none"  # local servers ignore it; the client insists on one
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=api_key, timeout=config.timeout_s, max_retries=0
        )
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        logger.info("OpenAI-compatible backend: %s, model %s", config.base_url, config.model)

    def complete(self, scene: Scene, messages: list[dict]) -> Completion:
        import openai

        config = self.config
        result = Completion()
        kwargs = dict(model=config.model, messages=messages, temperature=config.temperature, max_tokens=config.max_tokens)
        if config.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        for attempt in range(config.max_retries + 1):
            if attempt:
                result.retries += 1
            self.limiter.acquire()
            result.requests += 1
            retry_after = None
            try:
                response = self.client.chat.completions.create(**kwargs)
            except openai.APITimeoutError:
                kind = "timeout"
            except openai.APIConnectionError:
                kind = "connection_error"
            except openai.RateLimitError as error:
                kind = "rate_limited"
                retry_after = _retry_after(error)
            except openai.APIStatusError as error:
                if error.status_code in (408, 409) or error.status_code >= 500:
                    kind = f"http_{error.status_code}"
                else:
                    raise BackendError(
                        f"{config.base_url} refused the request (HTTP {error.status_code}): {error.message}"
                    ) from None
            else:
                if response.usage is not None:
                    result.prompt_tokens += response.usage.prompt_tokens or 0
                    result.completion_tokens += response.usage.completion_tokens or 0
                result.text = response.choices[0].message.content if response.choices else None
                return result
            result.errors[kind] += 1
            if attempt == config.max_retries:
                break
            delay = self._backoff(attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
                self.limiter.hold_off(retry_after)
            logger.debug("%s: %s, retry %d in %.2fs", scene.image.name, kind, attempt + 1, delay)
            time.sleep(delay)
        raise TransientBackendError(f"{scene.image.name}: request failed {result.requests} times ({dict(result.errors)})", result)

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff_max_s, self.config.backoff_s * (2**attempt))
        with self._random_lock:
            return base * (0.5 + 0.5 * self._random.random())


def _retry_after(error) -> float | None:
    try:
        value = error.response.headers.get("retry-after")
        return min(float(value), 300.0) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


class OfflineBackend:
    """Deterministic template questions built from category definitions, positions and sizes.

    For machines with no LLM: it lets the whole pipeline run end to end and yields usable (if plain)
    reasoning questions. The reply is JSON text in the same form an LLM must produce.
    """

    SINGLE = (
        "Which object in this image could be described as {d}?",
        "Find the thing in this picture that matches this description: {d}.",
        "Someone is looking for {d}. What in this scene should they pick?",
    )
    ALL = (
        "Point out every object in this image that is {d}.",
        "Which things in this picture are each {d}?",
    )
    LOCATED = "Which {size} object at the {position} of the image is {d}?"
    PLAIN = "What is the {size} object at the {position} of the image?"
    PAIR = "Show me everything here that is either {d1} or {d2}."

    def __init__(self, prompt: PromptConfig, seed: int = 0) -> None:
        self.prompt = prompt
        self.seed = seed

    def complete(self, scene: Scene, messages: list[dict]) -> Completion:
        rng = random.Random(f"{self.seed}:{scene.image.source}:{scene.image.name}")
        candidates = self._candidates(scene)
        if not self.prompt.allow_category_names:
            candidates = [c for c in candidates if not any(mentions_category(c["question"], o.category) for o in c["_objects"])]
        rng.shuffle(candidates)
        # Spread questions over different targets: one per answer set first, then the rest.
        by_target: dict[tuple, list[dict]] = {}
        for candidate in candidates:
            by_target.setdefault(tuple(candidate["objects"]), []).append(candidate)
        ordered = [group[0] for group in by_target.values()] + [c for group in by_target.values() for c in group[1:]]
        chosen = [{k: v for k, v in c.items() if k != "_objects"} for c in ordered[: self.prompt.questions_per_image]]
        return Completion(text=json.dumps({"questions": chosen}))

    def _candidates(self, scene: Scene) -> list[dict]:
        out = []
        seen_categories = []
        for obj in scene.objects:
            if obj.category.id in seen_categories:
                continue
            seen_categories.append(obj.category.id)
            instances = scene.instances_of(obj.category.id)
            d = _definition_phrase(obj.category.definition)
            name = obj.category.display_name
            if d and len(instances) == 1:
                for template in self.SINGLE:
                    out.append(_item(template.format(d=d), f"The {name} at the {obj.position}.", instances))
            elif d and len(instances) <= self.prompt.max_answer_objects:
                for template in self.ALL:
                    out.append(_item(template.format(d=d), f"All {len(instances)} {name} instances.", instances))
            for inst in instances:
                if d and len(instances) > 1 and _unique(scene, inst, same_category=True):
                    question = self.LOCATED.format(size=inst.size, position=inst.position, d=d)
                    out.append(_item(question, f"The {inst.size} {name} at the {inst.position}.", [inst]))
                if not d and _unique(scene, inst, same_category=False):
                    question = self.PLAIN.format(size=inst.size, position=inst.position)
                    out.append(_item(question, f"The {name} at the {inst.position}.", [inst]))
        defined = [o for o in scene.objects if o.category.definition]
        categories = list(dict.fromkeys(o.category.id for o in defined))
        for first, second in zip(categories, categories[1:]):
            objs = scene.instances_of(first) + scene.instances_of(second)
            if len(objs) <= self.prompt.max_answer_objects:
                d1 = _definition_phrase(objs[0].category.definition)
                d2 = _definition_phrase(scene.instances_of(second)[0].category.definition)
                names = f"{objs[0].category.display_name} and {scene.instances_of(second)[0].category.display_name}"
                out.append(_item(self.PAIR.format(d1=d1, d2=d2), f"The {names}.", objs))
        return out


def _item(question: str, answer: str, objects: list[SceneObject]) -> dict:
    return {"question": question, "answer": answer, "objects": [o.key for o in objects], "_objects": objects}


def _definition_phrase(definition: str) -> str:
    text = definition.strip().rstrip(".;: ")
    return text[:1].lower() + text[1:] if text else ""


def _unique(scene: Scene, obj: SceneObject, same_category: bool) -> bool:
    """Whether size + position single this object out (among its category, or among all objects)."""
    pool = scene.instances_of(obj.category.id) if same_category else scene.objects
    return sum(1 for o in pool if o.position == obj.position and o.size == obj.size) == 1


def build_backend(config: BackendConfig, prompt: PromptConfig, seed: int = 0) -> Backend:
    if config.kind == "offline":
        return OfflineBackend(prompt, seed)
    if config.kind == "openai":
        return OpenAIBackend(config, seed=seed)
    raise ValueError(f"backend.kind: unknown backend {config.kind!r}; choose 'openai' or 'offline'")
