"""Validation of a raw Dataplane document with Kuma's field paths and wording.

Work in progress: the full rule set of the foundation issue lands here.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Violation(NamedTuple):
    field: str
    message: str


def validate(doc: dict[str, Any]) -> list[Violation]:
    violations: list[Violation] = []
    net = doc.get("networking")
    if not isinstance(net, dict):
        violations.append(Violation("networking", "must be defined"))
    return violations


def unknown_fields(doc: dict[str, Any]) -> list[str]:
    return []
