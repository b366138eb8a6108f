"""Kuma's MeshTrafficPermission: who may call whom, decided per (destination, caller).

Pure: parsing and deciding, no sockets, no asyncio (`load_policies` reads one file, as the config
loader does). The inbound calls `decide` once per connection (TCP) or request (HTTP) with the
caller's tags from its certificate (`sidecar.identity.spiffe.source_tags_from_uris`).

    policies = parse_policies(text, "mesh/permissions.yaml")     # PolicyError
    decision = decide(policies, "backend", source_tags, mesh="default")
    if not decision.allowed: close / answer 403 "RBAC: access denied"
    if decision.shadow_deny: count and log as a shadow deny, then let it through

A document (Kuma's Universal format):

    type: MeshTrafficPermission
    name: allow-web
    mesh: default                      # optional, "default"
    spec:
      targetRef:                       # optional, Mesh; the destination side
        kind: MeshService              # Mesh | MeshService (name)
        name: backend
      from:                            # the callers, at least one entry
        - targetRef:
            kind: MeshSubset           # Mesh | MeshService (name) | MeshSubset (tags)
            tags: {version: v1}        #   | MeshServiceSubset (name and tags)
          default:
            action: Allow              # Allow | Deny | AllowWithShadowDeny

How `decide` picks, following Kuma's merging of targetRef policies:
1. Only policies of the destination's mesh count (when `mesh` is given), and of those only the
   ones whose top-level targetRef selects the destination (Mesh: every service; MeshService: the
   one named).
2. Every `from` entry of those policies whose targetRef matches the caller is a candidate. A
   MeshService entry matches a caller with that `kuma.io/service`; a MeshSubset entry matches when
   every tag it lists is among the caller's tags; Mesh matches every caller.
3. The most specific candidate wins: first by the `from` kind (MeshServiceSubset > MeshService >
   MeshSubset > Mesh), then by the top-level kind (MeshService > Mesh), then the policy whose name
   sorts last (Kuma merges policies sorted by name, later ones override), then the later entry in
   the policy.

Defaults, chosen and written down here:
- No policy at all for the mesh: every call is allowed (`Decision("Allow", None)`), as a mesh
  without MeshTrafficPermission files behaves in pysidecar (Kuma's default install creates an
  allow-all policy; this is the same outcome without the file).
- Policies exist but none has a `from` entry matching this caller and destination: the call is
  denied (`Decision("Deny", None)`), as Kuma denies when no permission matches.
- AllowWithShadowDeny lets the call through; `Decision.shadow_deny` tells the caller to log and
  count it as a deny that would have happened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

import yaml

log = logging.getLogger("sidecar.policy")

POLICY_TYPE = "MeshTrafficPermission"
SERVICE_TAG = "kuma.io/service"

ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"
ACTIONS = (ALLOW, DENY, ALLOW_WITH_SHADOW_DENY)

TOP_KINDS = {"Mesh": 0, "MeshService": 1}
FROM_KINDS = {"Mesh": 0, "MeshSubset": 1, "MeshService": 2, "MeshServiceSubset": 3}

_TARGET_REF_FIELDS = {"kind", "name", "tags"}
_SPEC_FIELDS = {"targetRef", "from"}
_FROM_FIELDS = {"targetRef", "default"}
_DEFAULT_FIELDS = {"action"}


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and each field at fault."""

    def __init__(self, source: str, violations: list[tuple[str, str]]):
        self.source = source
        self.violations = violations
        detail = "; ".join(f"{path}: {msg}" if path else msg for path, msg in violations)
        super().__init__(f"{source}: {detail}")


@dataclass(frozen=True)
class TargetRef:
    kind: str
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def selects_service(self, service: str) -> bool:
        """Top level: whether this policy applies to traffic toward `service`."""
        return self.kind == "Mesh" or self.name == service

    def matches_source(self, source: Mapping[str, frozenset[str]]) -> bool:
        """`from`: whether a caller with these tags (each a set of values) is selected."""
        if self.kind in ("MeshService", "MeshServiceSubset"):
            if self.name not in source.get(SERVICE_TAG, ()):
                return False
        for tag, value in self.tags.items():
            if value not in source.get(tag, ()):
                return False
        return True


@dataclass(frozen=True)
class FromRule:
    target_ref: TargetRef
    action: str


@dataclass(frozen=True)
class MeshTrafficPermission:
    name: str
    mesh: str
    target_ref: TargetRef
    rules: tuple[FromRule, ...]
    source: str = "<memory>"


@dataclass(frozen=True)
class Decision:
    """The verdict for one call and the policy that gave it (None for the defaults)."""

    action: str
    policy_name: str | None = None
    # What the inbound asks of every request, worked out once (plain attributes, not properties).
    allowed: bool = field(init=False, compare=False)
    shadow_deny: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", self.action != DENY)
        object.__setattr__(self, "shadow_deny", self.action == ALLOW_WITH_SHADOW_DENY)


NO_POLICY = Decision(ALLOW, None)
NO_MATCH = Decision(DENY, None)


# --- parsing -----------------------------------------------------------------------------------


class Checker:
    """Collects every violation of a document (field path, message), so that one error names
    them all; `MeshPassthrough` (`sidecar.transparent.passthrough`) checks with it too."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.violations.append((path, message))

    def mapping(self, value: Any, path: str, required: bool = True) -> dict[str, Any] | None:
        if value is None:
            if required:
                self.add(path, "must be defined")
            return None
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {kind_of(value)}")
            return None
        for key in value:
            if not isinstance(key, str):
                self.add(path, f"keys must be strings, got {key!r}")
                return None
        return value

    def string(self, value: Any, path: str) -> str | None:
        if value is None:
            self.add(path, "must be defined")
            return None
        if not isinstance(value, str) or not value:
            self.add(path, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def strings(self, value: Any, path: str) -> dict[str, str]:
        """A mapping of names to strings (tags, labels); a number reads as its text."""
        out: dict[str, str] = {}
        for key, item in (self.mapping(value, path) or {}).items():
            text = _tag_value(item)
            if text is None or not key:
                self.add(f'{path}["{key}"]', f"must be a string, got {kind_of(item)}")
            else:
                out[key] = text
        return out

    def unknown(self, value: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in value:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                self.add(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _tag_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _target_ref(check: Checker, raw: Any, path: str, kinds: Mapping[str, int]) -> TargetRef | None:
    ref = check.mapping(raw, path)
    if ref is None:
        return None
    check.unknown(ref, _TARGET_REF_FIELDS, path)
    kind = ref.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        check.add(f"{path}.kind", f"must be one of {', '.join(kinds)}, got {kind!r}")
        return None
    name = None
    tags: dict[str, str] = {}
    if kind in ("MeshService", "MeshServiceSubset"):
        name = check.string(ref.get("name"), f"{path}.name")
    elif "name" in ref:
        check.add(f"{path}.name", f"must not be set with kind {kind}")
    if kind in ("MeshSubset", "MeshServiceSubset"):
        tags = check.strings(ref.get("tags", {}), f"{path}.tags")
    elif "tags" in ref:
        check.add(f"{path}.tags", f"must not be set with kind {kind}")
    if kind in ("MeshService", "MeshServiceSubset") and name is None:
        return None
    return TargetRef(kind=kind, name=name, tags=MappingProxyType(tags))


def read_header(
    doc: Any, source: str, kind: str
) -> tuple[Checker, str | None, str, dict[str, Any] | None]:
    """What every policy document has, checked: its type (else `PolicyError` at once), name,
    mesh and spec; the `Checker` goes on with the rest of the document."""
    check = Checker()
    if not isinstance(doc, dict):
        raise PolicyError(source, [("", f"a policy must be a mapping, got {kind_of(doc)}")])
    if doc.get("type") != kind:
        raise PolicyError(source, [("type", f"must be {kind!r}, got {doc.get('type')!r}")])
    name = check.string(doc.get("name"), "name")
    mesh = doc.get("mesh", "default")
    if not isinstance(mesh, str) or not mesh:
        check.add("mesh", f"must be a non-empty string, got {mesh!r}")
    return check, name, mesh, check.mapping(doc.get("spec"), "spec")


def is_policy_document(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("type") == POLICY_TYPE


def parse_policy(doc: Any, source: str = "<memory>") -> MeshTrafficPermission:
    """One parsed YAML document to a policy; `PolicyError` lists every field at fault."""
    check, name, mesh, spec = read_header(doc, source, POLICY_TYPE)
    top: TargetRef | None = TargetRef(kind="Mesh")
    rules: list[FromRule] = []
    if spec is not None:
        check.unknown(spec, _SPEC_FIELDS, "spec")
        if spec.get("targetRef") is not None:
            top = _target_ref(check, spec["targetRef"], "spec.targetRef", TOP_KINDS)
        entries = spec.get("from")
        if entries is None:
            check.add("spec.from", "must be defined")
        elif not isinstance(entries, list):
            check.add("spec.from", f"must be a list, got {kind_of(entries)}")
        elif not entries:
            check.add("spec.from", "needs at least one item")
        else:
            for i, raw in enumerate(entries):
                path = f"spec.from[{i}]"
                entry = check.mapping(raw, path)
                if entry is None:
                    continue
                check.unknown(entry, _FROM_FIELDS, path)
                ref = _target_ref(check, entry.get("targetRef"), f"{path}.targetRef", FROM_KINDS)
                default = check.mapping(entry.get("default"), f"{path}.default")
                action = None
                if default is not None:
                    check.unknown(default, _DEFAULT_FIELDS, f"{path}.default")
                    action = default.get("action")
                    if action not in ACTIONS:
                        check.add(
                            f"{path}.default.action",
                            f"must be one of {', '.join(ACTIONS)}, got {action!r}",
                        )
                        action = None
                if ref is not None and action is not None:
                    rules.append(FromRule(ref, action))
    if check.violations:
        raise PolicyError(source, check.violations)
    assert name is not None and top is not None
    return MeshTrafficPermission(
        name=name, mesh=mesh, target_ref=top, rules=tuple(rules), source=source
    )


def parse_policies(text: str, source: str = "<memory>") -> list[MeshTrafficPermission]:
    """Every MeshTrafficPermission in a (multi-document) YAML text.

    Documents of another `type` (a Dataplane in the same mesh directory) are skipped; a document
    that is not a mapping, or a YAML error, is a `PolicyError`.
    """
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise PolicyError(source, [("", f"YAML syntax error at {where}{exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, [("", f"YAML error: {exc}")]) from None
    except (ValueError, TypeError, RecursionError) as exc:  # odd scalars, deep nesting
        raise PolicyError(source, [("", f"YAML error: {exc}")]) from None
    policies = []
    for index, doc in enumerate(documents):
        where = source if len(documents) == 1 else f"{source} (document {index + 1})"
        if not isinstance(doc, dict):
            raise PolicyError(where, [("", f"a document must be a mapping, got {kind_of(doc)}")])
        if is_policy_document(doc):
            policies.append(parse_policy(doc, where))
    return policies


def load_policies(path: str | os.PathLike[str]) -> list[MeshTrafficPermission]:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError(source, [("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise PolicyError(source, [("", "not a UTF-8 text file")]) from None
    return parse_policies(text, source)


# --- the policies of one kind in force ---------------------------------------------------------


class _Named(Protocol):
    name: str


P = TypeVar("P", bound=_Named)


class PolicySet(Generic[P]):
    """The policies of one kind from a mesh directory's documents (MeshTrafficPermission,
    MeshPassthrough), replaced whole when they change; `policies` is a new tuple only then, so
    callers may tell a change by identity. A document that does not parse is left out (Kuma
    would not have accepted it), with one warning per file and message."""

    def __init__(self, kind: str, parse: Callable[[Any, str], P]) -> None:
        self.kind = kind
        self.parse = parse
        self.policies: tuple[P, ...] = ()
        self._errors: dict[str, str] = {}

    def update(self, documents: Iterable[tuple[str, dict[str, Any]]]) -> bool:
        """Take the documents of this kind of a mesh snapshot; True when the policies changed."""
        policies: list[P] = []
        errors: dict[str, str] = {}
        for source, doc in documents:
            if doc.get("type") != self.kind:
                continue
            try:
                policies.append(self.parse(doc, source))
            except PolicyError as exc:
                errors[f"{source}:{doc.get('name')}"] = str(exc)
        for key, message in errors.items():
            if self._errors.get(key) != message:
                log.warning("event=policy_skipped kind=%s error=%r", self.kind, message)
        self._errors = errors
        new = tuple(policies)
        if new == self.policies:
            return False
        self.policies = new
        log.info(
            "event=policies_loaded kind=%s count=%d names=%s",
            self.kind,
            len(new),
            ",".join(p.name for p in new) or "-",
        )
        return True


# --- deciding ----------------------------------------------------------------------------------


def _normalise(source_tags: Mapping[str, str | Collection[str]]) -> dict[str, frozenset[str]]:
    out = {}
    for tag, values in source_tags.items():
        out[tag] = frozenset([values]) if isinstance(values, str) else frozenset(values)
    return out


def decide(
    policies: Iterable[MeshTrafficPermission],
    destination_service: str,
    source_tags: Mapping[str, str | Collection[str]],
    *,
    mesh: str | None = None,
) -> Decision:
    """The action for a call from a caller with `source_tags` to `destination_service`.

    `source_tags` maps each tag to a value or a set of values (a caller with several inbounds has
    several services); `kuma.io/service` is the caller's service. See the module docstring for
    the precedence and the two defaults.
    """
    source = _normalise(source_tags)
    best: tuple[tuple[int, int, str, str, int], FromRule, str] | None = None
    any_policy = False
    for policy in policies:
        if mesh is not None and policy.mesh != mesh:
            continue
        any_policy = True
        if not policy.target_ref.selects_service(destination_service):
            continue
        top_rank = TOP_KINDS[policy.target_ref.kind]
        for index, rule in enumerate(policy.rules):
            if not rule.target_ref.matches_source(source):
                continue
            key = (FROM_KINDS[rule.target_ref.kind], top_rank, policy.name, policy.source, index)
            if best is None or key > best[0]:
                best = (key, rule, policy.name)
    if not any_policy:
        return NO_POLICY
    if best is None:
        return NO_MATCH
    return Decision(best[1].action, best[2])
