"""What the simulator knows about a model from its name, as users write it (snapshots, vendor prefixes)."""

from __future__ import annotations

import re


def bare_model(model: str) -> str:
    """The model name without an OpenRouter vendor prefix (`openai/gpt-4o` -> `gpt-4o`)."""
    return model.rsplit("/", 1)[-1].lower()


def openai_encoding(model: str) -> str:
    name = bare_model(model)
    if name.startswith("gpt-3.5") or name == "gpt-4" or (name.startswith("gpt-4-")):
        return "cl100k_base"
    return "o200k_base"


def is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 models bill hidden reasoning tokens as output (gpt-5 chat models do not)."""
    name = bare_model(model)
    if re.match(r"o\d", name) or name.startswith("codex-mini"):
        return True
    return name.startswith("gpt-5") and "-chat" not in name


def default_reasoning_effort(model: str) -> str:
    """gpt-5.1 and later reason only when asked (effort "none"); older reasoning models at "medium"."""
    return "none" if re.match(r"gpt-5\.\d", bare_model(model)) else "medium"


def offers_flex(model: str) -> bool:
    name = bare_model(model)
    return name.startswith(("o3", "o4-mini")) or is_reasoning_model(name) and name.startswith("gpt-5")


def caches_prompts(model: str) -> bool:
    """Automatic prompt caching: gpt-4o and newer (not the cl100k generation)."""
    return openai_encoding(model) == "o200k_base"
