"""Printing converted rules as YAML: `to_yaml` writes the rules under a comment header (their
Bifrost origin and the conversion's notes), with safe YAML, no anchors, and Decimal amounts
printed exactly as numbers so the file reads back to the same values."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with Decimal printed as the number it is and no anchors for shared lists."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _represent_decimal(dumper: yaml.SafeDumper, value: Decimal) -> yaml.ScalarNode:
    # Positional notation, never an exponent: YAML 1.1 reads "1E+2" as text. Trailing zeros stay.
    text = format(value, "f")
    tag = "tag:yaml.org,2002:float" if "." in text else "tag:yaml.org,2002:int"
    return dumper.represent_scalar(tag, text)


_Dumper.add_representer(Decimal, _represent_decimal)


def to_yaml(rules: dict[str, Any], *, source: str | None = None, notes: Iterable[str] = ()) -> str:
    """The rules as YAML text, headed by a comment saying they were converted from Bifrost (and
    from `source`, when given) plus any `notes`. Decimal amounts are printed exactly, as numbers
    (`100.50`, not `'100.50'`), so the file reads back to the same values."""
    origin = f" ({source})" if source else ""
    header = [
        f"# spendfuse rules converted from Bifrost governance{origin} by `spendfuse import-bifrost`.",
        "# Clients keep sending their virtual key in the x-bf-vk header.",
    ]
    header += [f"# note: {n}" for n in notes]
    body = yaml.dump(rules, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(header) + "\n" + body
