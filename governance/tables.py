"""Reading one YAML table of `rules/` (fees, regional prices, server tools) into its pydantic
model, failing closed: `load_table` raises PolicyError naming the table and the file when it
cannot be read, parsed or validated, so a proxy without its table does not start."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from governance.errors import PolicyError
from governance.policy import parse_yaml


def load_table[Table: BaseModel](path: Path, model: type[Table], what: str) -> Table:
    """The table at `path` as `model` (an empty file is an empty table). Raises `PolicyError`
    ("cannot read the `what` ...") when the file is missing, is not YAML, or does not validate."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
        return model.model_validate(data or {})
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as e:
        raise PolicyError(f"cannot read the {what} {str(path)!r}: {e}") from e
