"""Text prompts: one per class, from a template per dataset."""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEMPLATE = "a photo of a {}"
TEMPLATES = {
    "fashion-mnist": "a photo of a {}",
    "mnist-10k": "a handwritten digit {}",
}


def template_for(dataset: str) -> str:
    return TEMPLATES.get(Path(dataset).name if "/" in dataset else dataset, DEFAULT_TEMPLATE)


def class_prompts(class_names: tuple[str, ...], template: str) -> list[str]:
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} needs a {{}} where the class name goes")
    return [template.format(name) for name in class_names]


def prompt_words(prompts: list[str]) -> list[str]:
    """The words a tokenizer should keep whole (CLIP's pre-tokenizer splits on - and digits)."""
    import re

    return sorted({w for p in prompts for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", p.lower())})
