"""Prompt a provider adds on its own side: tokens the bill shows and the request body does not.

Anthropic adds a tool-use system prompt to every request with tools (its size by model and
`tool_choice`), and more for its own bash, text-editor and computer-use tools. The figures are
Anthropic's published ones, data in `rules/prompt_overheads.yaml`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from governance.matching import lookup_model


@dataclass(frozen=True)
class AnthropicOverheads:
    """`rules/prompt_overheads.yaml`, `anthropic:`."""

    system_prompt: Mapping[str, Mapping[str, int]]  # model -> tool_choice type -> tokens
    tools: Mapping[str, int]  # Anthropic-defined tool type (without its date) -> tokens

    def tool_use_tokens(self, model: str, tools: Any, tool_choice: Any) -> int:
        """Tokens Anthropic adds to a request with `tools` (any list, even empty: the prompt
        is added whenever the request carries the parameter) and `tool_choice`. An unknown
        model counts the largest value of the table; an unknown tool_choice, its model's."""
        if not isinstance(tools, list):
            return 0
        found = lookup_model(self.system_prompt, model)
        if found is None:
            total = max(v for by_choice in self.system_prompt.values() for v in by_choice.values())
        else:
            by_choice = found[1]
            kind = "auto" if tool_choice is None else None  # auto: the API's default choice
            if isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("type"), str):
                kind = tool_choice["type"]
            total = by_choice[kind] if kind in by_choice else max(by_choice.values())
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if isinstance(kind, str):
                total += self.tools.get(kind.split("_20", 1)[0], 0)
        return total


def _tokens(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: must be a number of tokens, not {value!r}")
    return value


def parse_rules(data: Any, origin: str = "prompt overheads") -> AnthropicOverheads:
    """Validate the overheads table. Raises ValueError naming the bad entry."""
    section = data.get("anthropic") if isinstance(data, Mapping) else None
    prompts = section.get("tool_use_system_prompt") if isinstance(section, Mapping) else None
    tools = section.get("tools") if isinstance(section, Mapping) else None
    if not isinstance(prompts, Mapping) or not prompts or not isinstance(tools, Mapping):
        raise ValueError(f"{origin}: needs anthropic.tool_use_system_prompt and anthropic.tools")
    table: dict[str, dict[str, int]] = {}
    for model, by_choice in prompts.items():
        if not isinstance(by_choice, Mapping) or not by_choice:
            raise ValueError(f"{origin}: {model}: must map tool_choice types to tokens")
        table[str(model)] = {str(k): _tokens(v, f"{origin}: {model}.{k}") for k, v in by_choice.items()}
    return AnthropicOverheads(table, {str(k): _tokens(v, f"{origin}: tools.{k}") for k, v in tools.items()})


@functools.cache
def anthropic() -> AnthropicOverheads:
    """The shipped table, read once. Raises ValueError if it is invalid."""
    from governance import RULES_DIR

    path = RULES_DIR / "prompt_overheads.yaml"
    return parse_rules(yaml.safe_load(path.read_text()), str(path))
