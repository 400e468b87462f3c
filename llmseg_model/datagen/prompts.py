"""The chat prompt that asks an LLM for reasoning questions, and the strict parser of its reply.

The LLM sees a text scene summary with short object ids and must answer with one JSON object:
`{"questions": [{"question": ..., "answer": ..., "objects": ["obj1", ...]}]}`. Anything else is a
malformed reply; the generator re-asks.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from pathlib import Path

from llmseg_model.datagen.config import PromptConfig
from llmseg_model.datagen.selection import Scene

SYSTEM_PROMPT = """You write training data for reasoning segmentation: a user asks an indirect \
question about an image and a model must segment the object(s) that answer it.

You get a description of one image: its annotated objects with ids, categories, definitions, \
positions and sizes. Write {count} diverse questions. Rules:
- Each question must be answerable by looking at the image, and its answer is one or more of the \
listed objects (at most {max_objects}), given by their ids.
- Require reasoning: refer to an object by its function, use, purpose, properties, or relation to \
other objects, or a situation in which someone needs it. {naming_rule}
- If several instances of a category are listed, either the answer includes all of them, or the \
question tells them apart (e.g. by position or size).
- Do not ask about objects that are not listed.
- "answer" is a short sentence that names the target object(s) and says why they answer the question.

Reply with a single JSON object and nothing else, in exactly this form:
{{"questions": [{{"question": "...", "answer": "...", "objects": ["obj1"]}}]}}"""

NAMING_FORBIDDEN = "Never name the answer's category, or any synonym of it, in the question."
NAMING_ALLOWED = "Naming the answer's category is allowed but not required."


class ResponseFormatError(ValueError):
    """The reply is not the JSON object asked for. `reason` goes into the rejection report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def system_prompt(config: PromptConfig) -> str:
    text = SYSTEM_PROMPT.format(
        count=config.questions_per_image,
        max_objects=config.max_answer_objects,
        naming_rule=NAMING_ALLOWED if config.allow_category_names else NAMING_FORBIDDEN,
    )
    if config.extra_instructions:
        text += "\n" + config.extra_instructions.strip()
    return text


def user_prompt(scene: Scene) -> str:
    return f"Image name: {scene.image.name}\n{scene.summary}\n\nWrite the questions now as JSON."


def build_messages(scene: Scene, config: PromptConfig) -> list[dict]:
    """OpenAI chat messages for one image; the image itself only when `send_image` is set."""
    text = user_prompt(scene)
    if config.send_image:
        path = scene.image.path
        if path is None or not path.is_file():
            raise FileNotFoundError(f"prompt.send_image is set but the image file is missing: {path}")
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_data_url(path)}}]
    else:
        content = text
    return [{"role": "system", "content": system_prompt(config)}, {"role": "user", "content": content}]


def image_data_url(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def parse_response(text: str | None) -> list[dict]:
    """The reply's list of question items; ResponseFormatError unless it is exactly the JSON asked for.

    A single surrounding markdown code fence is tolerated (many models add one even in JSON mode);
    prose around the JSON is not.
    """
    if text is None or not text.strip():
        raise ResponseFormatError("empty_response", "the model returned no text")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise ResponseFormatError("malformed_json", f"reply is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ResponseFormatError("bad_schema", 'reply must be an object with a "questions" list')
    return data["questions"]
