"""MeshTrafficPermission: parsing, validation messages, and decide() precedence."""

from __future__ import annotations

import ast
import copy
import inspect

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import policy
from sidecar.identity.spiffe import source_tags_from_uris
from sidecar.policy import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    Decision,
    PolicyError,
    decide,
    load_policies,
    parse_policies,
    parse_policy,
)


def mtp(name: str, frm: list[dict], target: dict | None = None, mesh: str = "default") -> dict:
    spec: dict = {"from": frm}
    if target is not None:
        spec["targetRef"] = target
    return {"type": "MeshTrafficPermission", "name": name, "mesh": mesh, "spec": spec}


def rule(action: str, kind: str = "Mesh", **ref) -> dict:
    return {"targetRef": {"kind": kind, **ref}, "default": {"action": action}}


def parse(*docs: dict) -> list[policy.MeshTrafficPermission]:
    return [parse_policy(d, f"{d['name']}.yaml") for d in docs]


WEB = {"kuma.io/service": "web", "version": "v1"}
WEB_V2 = {"kuma.io/service": "web", "version": "v2"}
ADMIN = {"kuma.io/service": "admin"}


def test_module_is_pure():
    tree = ast.parse(inspect.getsource(policy))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"ssl", "socket", "asyncio"}


# --- parsing ------------------------------------------------------------------------------------


def test_parse_kuma_universal_document():
    text = """
type: MeshTrafficPermission
name: allow-web
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: MeshService
        name: web
      default:
        action: Allow
    - targetRef:
        kind: MeshSubset
        tags:
          version: v1
          kuma.io/zone: east
      default:
        action: AllowWithShadowDeny
    - targetRef:
        kind: Mesh
      default:
        action: Deny
"""
    [p] = parse_policies(text, "perm.yaml")
    assert p.name == "allow-web" and p.mesh == "default" and p.source == "perm.yaml"
    assert (p.target_ref.kind, p.target_ref.name) == ("MeshService", "backend")
    assert [(r.target_ref.kind, r.action) for r in p.rules] == [
        ("MeshService", ALLOW),
        ("MeshSubset", ALLOW_WITH_SHADOW_DENY),
        ("Mesh", DENY),
    ]
    assert dict(p.rules[1].target_ref.tags) == {"version": "v1", "kuma.io/zone": "east"}


def test_defaults_mesh_and_top_level_target():
    [p] = parse({"type": "MeshTrafficPermission", "name": "x", "spec": {"from": [rule(ALLOW)]}})
    assert p.mesh == "default"
    assert p.target_ref.kind == "Mesh"


def test_other_documents_in_the_file_are_skipped():
    text = """
type: Dataplane
mesh: default
name: web-1
networking: {address: 127.0.0.1}
---
type: MeshTrafficPermission
name: a
spec:
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
"""
    assert [p.name for p in parse_policies(text, "mesh.yaml")] == ["a"]
    assert parse_policies("", "empty.yaml") == []


def test_load_policies_from_a_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(mtp("p", [rule(DENY)])))
    assert load_policies(path)[0].rules[0].action == DENY
    with pytest.raises(PolicyError, match=f"^{tmp_path / 'missing.yaml'}: cannot read"):
        load_policies(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ({"type": "MeshTrafficPermission", "spec": {"from": [rule(ALLOW)]}}, "name",
         "must be defined"),
        (mtp("x", [rule("allow")]), "spec.from[0].default.action",
         "must be one of Allow, Deny, AllowWithShadowDeny, got 'allow'"),
        (mtp("x", [{"targetRef": {"kind": "Mesh"}}]), "spec.from[0].default", "must be defined"),
        (mtp("x", [rule(ALLOW, "MeshService")]), "spec.from[0].targetRef.name",
         "must be defined"),
        (mtp("x", [rule(ALLOW, "MeshGateway", name="g")]), "spec.from[0].targetRef.kind",
         "must be one of Mesh, MeshSubset, MeshService, MeshServiceSubset, got 'MeshGateway'"),
        (mtp("x", [rule(ALLOW, "Mesh", name="web")]), "spec.from[0].targetRef.name",
         "must not be set with kind Mesh"),
        (mtp("x", [rule(ALLOW, "MeshSubset", tags={"v": ["a"]})]),
         'spec.from[0].targetRef.tags["v"]', "must be a string"),
        (mtp("x", [rule(ALLOW)], target={"kind": "MeshSubset", "tags": {}}), "spec.targetRef.kind",
         "must be one of Mesh, MeshService, got 'MeshSubset'"),
        (mtp("x", []), "spec.from", "needs at least one item"),
        (mtp("x", {"kind": "Mesh"}), "spec.from", "must be a list, got a mapping"),
        ({"type": "MeshTrafficPermission", "name": "x"}, "spec", "must be defined"),
        ({"type": "MeshTrafficPermission", "name": "x", "spec": {"from": [rule(ALLOW)],
          "to": []}}, "spec.to", "unknown field"),
        (mtp("x", [{"targetRef": {"kind": "Mesh"}, "default": {"acton": "Allow"}}]),
         "spec.from[0].default.acton", "unknown field"),
        (mtp("x", [rule(ALLOW)], mesh=""), "mesh", "must be a non-empty string"),
    ],
)  # fmt: skip
def test_validation_names_file_and_field(doc, field, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "mesh/perm.yaml")
    text = str(info.value)
    assert text.startswith("mesh/perm.yaml: ")
    assert f"{field}: {message}" in text
    assert (field, message) in [(f, m[: len(message)]) for f, m in info.value.violations]


def test_all_violations_are_reported_at_once():
    doc = mtp("x", [rule("Nope"), rule(ALLOW, "MeshService")])
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "p.yaml")
    fields = [f for f, _ in info.value.violations]
    assert fields == ["spec.from[0].default.action", "spec.from[1].targetRef.name"]


def test_yaml_errors_carry_the_position():
    with pytest.raises(PolicyError, match=r"^p.yaml: YAML syntax error at line 3, column 1"):
        parse_policies("type: MeshTrafficPermission\nname: [unclosed\n", "p.yaml")
    with pytest.raises(PolicyError, match="document 2"):
        parse_policies("type: X\n---\n- a list\n", "p.yaml")


# --- decide -------------------------------------------------------------------------------------


def test_no_policy_allows_everything():
    assert decide([], "backend", WEB) == Decision(ALLOW, None)
    assert decide([], "backend", {}).allowed
    # Policies of another mesh do not govern this one.
    other = parse(mtp("deny-all", [rule(DENY)], mesh="other"))
    assert decide(other, "backend", WEB, mesh="default") == Decision(ALLOW, None)


def test_policies_present_but_none_matching_denies():
    policies = parse(
        mtp("web-to-backend", [rule(ALLOW, "MeshService", name="web")],
            target={"kind": "MeshService", "name": "backend"})
    )  # fmt: skip
    assert decide(policies, "backend", WEB) == Decision(ALLOW, "web-to-backend")
    assert decide(policies, "backend", ADMIN) == Decision(DENY, None)
    assert decide(policies, "payments", WEB) == Decision(DENY, None)
    assert not decide(policies, "backend", ADMIN).allowed


def test_allow_and_deny_by_source_service():
    policies = parse(
        mtp("p", [rule(ALLOW, "MeshService", name="web"), rule(DENY, "MeshService", name="admin")])
    )
    assert decide(policies, "backend", WEB).action == ALLOW
    assert decide(policies, "backend", ADMIN).action == DENY
    assert decide(policies, "backend", {"kuma.io/service": "other"}) == Decision(DENY, None)


def test_mesh_subset_by_tags():
    policies = parse(
        mtp("subset", [
            rule(DENY, "Mesh"),
            rule(ALLOW, "MeshSubset", tags={"version": "v1"}),
            rule(ALLOW_WITH_SHADOW_DENY, "MeshSubset", tags={"version": "v2", "zone": "east"}),
        ])
    )  # fmt: skip
    assert decide(policies, "backend", WEB).action == ALLOW
    assert decide(policies, "backend", WEB_V2).action == DENY  # no zone tag: only Mesh matches
    shadow = decide(policies, "backend", {**WEB_V2, "zone": "east"})
    assert shadow.action == ALLOW_WITH_SHADOW_DENY
    assert shadow.allowed and shadow.shadow_deny
    assert decide(policies, "backend", ADMIN).action == DENY


def test_from_specificity_beats_order():
    # The Mesh-wide Deny comes last by name, but MeshService is more specific in `from`.
    policies = parse(
        mtp("a-allow-web", [rule(ALLOW, "MeshService", name="web")]),
        mtp("z-deny-all", [rule(DENY, "Mesh")]),
        mtp("m-subset", [rule(DENY, "MeshSubset", tags={"version": "v1"})]),
    )
    assert decide(policies, "backend", WEB) == Decision(ALLOW, "a-allow-web")
    # Without a service rule, the subset beats Mesh for v1 and Mesh applies to the rest.
    assert decide(policies, "backend", {**ADMIN, "version": "v1"}) == Decision(DENY, "m-subset")
    assert decide(policies, "backend", ADMIN) == Decision(DENY, "z-deny-all")
    # MeshServiceSubset is the most specific of all.
    policies += parse(
        mtp("0-ss", [rule(ALLOW_WITH_SHADOW_DENY, "MeshServiceSubset", name="web",
                          tags={"version": "v1"})])
    )  # fmt: skip
    assert decide(policies, "backend", WEB) == Decision(ALLOW_WITH_SHADOW_DENY, "0-ss")
    assert decide(policies, "backend", WEB_V2) == Decision(ALLOW, "a-allow-web")


def test_top_level_meshservice_beats_mesh():
    policies = parse(
        mtp("zz-mesh-wide", [rule(DENY, "MeshService", name="web")]),
        mtp("aa-backend", [rule(ALLOW, "MeshService", name="web")],
            target={"kind": "MeshService", "name": "backend"}),
    )  # fmt: skip
    # Same `from` kind: the policy that targets the service wins over the Mesh-wide one, even
    # though the Mesh-wide one sorts later by name.
    assert decide(policies, "backend", WEB) == Decision(ALLOW, "aa-backend")
    assert decide(policies, "payments", WEB) == Decision(DENY, "zz-mesh-wide")


def test_tie_goes_to_the_later_name_then_the_later_entry():
    a = mtp("a", [rule(DENY, "MeshService", name="web")])
    b = mtp("b", [rule(ALLOW, "MeshService", name="web")])
    assert decide(parse(a, b), "backend", WEB) == Decision(ALLOW, "b")
    assert decide(parse(b, a), "backend", WEB) == Decision(ALLOW, "b")  # input order is irrelevant
    a2 = mtp("c", [rule(DENY, "Mesh"), rule(ALLOW, "Mesh")])
    assert decide(parse(a2), "backend", WEB) == Decision(ALLOW, "c")


def test_multi_valued_source_tags_from_a_certificate():
    policies = parse(mtp("p", [rule(ALLOW, "MeshService", name="admin")]))
    # A dataplane with two inbounds is both services at once.
    tags = source_tags_from_uris(
        ["spiffe://default/web", "spiffe://default/admin", "kuma://version/v1"], "default"
    )
    assert decide(policies, "backend", tags) == Decision(ALLOW, "p")
    subset = parse(mtp("s", [rule(ALLOW, "MeshSubset", tags={"version": "v1"})]))
    assert decide(subset, "backend", tags).allowed
    assert decide(subset, "backend", {"version": ["v2", "v3"]}) == Decision(DENY, None)


def test_mesh_argument_filters_policies():
    policies = parse(
        mtp("allow", [rule(ALLOW)], mesh="default"),
        mtp("deny", [rule(DENY)], mesh="other"),
    )
    assert decide(policies, "backend", WEB, mesh="default") == Decision(ALLOW, "allow")
    assert decide(policies, "backend", WEB, mesh="other") == Decision(DENY, "deny")


# --- the parser raises only PolicyError ---------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(
        ["Mesh", "MeshService", "MeshSubset", "MeshServiceSubset", "Allow", "Deny",
         "AllowWithShadowDeny", "MeshTrafficPermission", "kind", "name", "tags"]
    ),
)  # fmt: skip
_keys = st.one_of(
    st.sampled_from(["type", "name", "mesh", "spec", "targetRef", "from", "default", "action",
                     "kind", "tags", "to"]),
    st.text(max_size=5),
    st.integers(),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=25,
)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=10)


def _valid_ref(kinds):
    options = {
        "Mesh": st.just({"kind": "Mesh"}),
        "MeshService": st.builds(lambda n: {"kind": "MeshService", "name": n}, _names),
        "MeshSubset": st.builds(
            lambda t: {"kind": "MeshSubset", "tags": t}, st.dictionaries(_names, _names, max_size=3)
        ),
        "MeshServiceSubset": st.builds(
            lambda n, t: {"kind": "MeshServiceSubset", "name": n, "tags": t},
            _names,
            st.dictionaries(_names, _names, max_size=3),
        ),
    }
    return st.one_of(*(options[k] for k in kinds))


_valid_docs = st.builds(
    lambda name, mesh, top, entries: {
        "type": "MeshTrafficPermission",
        "name": name,
        "mesh": mesh,
        "spec": {"targetRef": top, "from": entries},
    },
    _names,
    st.sampled_from(["default", "other"]),
    _valid_ref(policy.TOP_KINDS),
    st.lists(
        st.builds(
            lambda ref, action: {"targetRef": ref, "default": {"action": action}},
            _valid_ref(policy.FROM_KINDS),
            st.sampled_from(policy.ACTIONS),
        ),
        min_size=1,
        max_size=4,
    ),
)


@st.composite
def _mutated(draw):
    """A valid document with one value somewhere inside replaced, added or removed."""
    doc = copy.deepcopy(draw(_valid_docs))  # never mutate what a strategy may hand out again
    node = doc
    while True:
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=str)))
        elif isinstance(node, list) and node:
            key = draw(st.integers(0, len(node) - 1))
        else:
            return doc
        if draw(st.booleans()) or not isinstance(node[key], dict | list):
            op = draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                node[key] = draw(_values)
            elif op == "delete":
                del node[key]
            elif isinstance(node, dict):
                node[draw(_keys)] = draw(_values)
            else:
                node.append(draw(_values))
            return doc
        node = node[key]


def _near_valid():
    return st.one_of(_valid_docs, _mutated())


@settings(max_examples=400)
@given(st.one_of(_values, _near_valid()))
def test_parse_policy_raises_only_policy_error(doc):
    try:
        result = parse_policy(doc, "fuzz.yaml")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return
    assert isinstance(result, policy.MeshTrafficPermission)
    assert result.rules
    # Whatever parses can be decided on.
    decide([result], "backend", {"kuma.io/service": "web"})


@settings(max_examples=300)
@given(
    st.text(alphabet=st.sampled_from(list("type:Mesh-[]{}\n \t'\"&*!|>%@`#,?=~\\x01")), max_size=80)
)
def test_parse_policies_on_arbitrary_text_raises_only_policy_error(text):
    try:
        parse_policies(text, "fuzz.yaml")
    except PolicyError:
        pass


@settings(max_examples=200)
@given(st.lists(_near_valid(), min_size=1, max_size=3))
def test_parse_policies_on_dumped_documents_raises_only_policy_error(docs):
    try:
        text = yaml.safe_dump_all(docs)
    except yaml.YAMLError:
        return
    try:
        parse_policies(text, "fuzz.yaml")
    except PolicyError:
        pass
