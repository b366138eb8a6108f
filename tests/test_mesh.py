"""Mesh resolution and protocol inference: property tests over the pure parts."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import model
from sidecar.config.dataplane import parse_dataplane
from sidecar.config.mesh import MeshDirectory, MeshSnapshot, common_protocol
from sidecar.plan import plan_listeners

PROTOCOLS = st.sampled_from(["grpc", "http", "http2", "kafka", "tcp"])
CHAIN = {"grpc": 3, "http2": 2, "http": 2, "kafka": 2, "tcp": 1}  # depth in Kuma's chains


def test_kuma_examples():
    assert common_protocol(["grpc", "http2"]) == "http2"
    assert common_protocol(["http", "http2"]) == "tcp"
    assert common_protocol(["http", "tcp"]) == "tcp"
    assert common_protocol(["grpc", "grpc"]) == "grpc"
    assert common_protocol(["kafka", "http"]) == "tcp"
    assert common_protocol(["grpc", "http"]) == "tcp"
    assert common_protocol([]) == "tcp"


@given(st.lists(PROTOCOLS, min_size=1, max_size=6))
def test_common_protocol_is_order_free_and_idempotent(protocols):
    result = common_protocol(protocols)
    assert result == common_protocol(list(reversed(protocols)))
    assert result == common_protocol([*protocols, result])
    assert common_protocol([result]) == result


@given(st.lists(PROTOCOLS, min_size=1, max_size=6))
def test_common_protocol_generalises_every_member(protocols):
    """The result is reachable from each endpoint's protocol, and one tcp makes the service tcp."""
    result = common_protocol(protocols)
    for p in protocols:
        assert common_protocol([p, result]) == result
        assert CHAIN[result] <= CHAIN[p]
    if "tcp" in protocols:
        assert result == "tcp"
    if len(set(protocols)) == 1:
        assert result == protocols[0]


TAG_VALUES = st.sampled_from(["v1", "v2", "eu", "us"])


def member(i: int, service: str, tags: dict[str, str], ready: bool = True) -> model.Dataplane:
    inbound = {
        "port": 10000 + i,
        "servicePort": 20000 + i,
        "tags": {"kuma.io/service": service, **tags},
    }
    if not ready:
        inbound["health"] = {"ready": False}
    import yaml

    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": f"m{i}",
        "networking": {"address": f"127.0.0.{i + 1}", "inbound": [inbound]},
    }
    return parse_dataplane(yaml.safe_dump(doc), f"m{i}.yaml")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["backend", "web"]),
            st.dictionaries(st.sampled_from(["version", "zone"]), TAG_VALUES, max_size=2),
            st.booleans(),
        ),
        max_size=6,
    ),
    st.dictionaries(st.sampled_from(["version", "zone"]), TAG_VALUES, max_size=2),
)
def test_endpoints_are_exactly_the_serving_inbounds_whose_tags_match(members, subset):
    dataplanes = tuple(member(i, s, t, ready) for i, (s, t, ready) in enumerate(members))
    snapshot = MeshSnapshot("default", dataplanes)
    selector = {"kuma.io/service": "backend", **subset}
    got = {(e.address, e.port) for e in snapshot.endpoints(selector)}
    want = {
        (f"127.0.0.{i + 1}", 10000 + i)
        for i, (s, t, ready) in enumerate(members)
        if s == "backend" and ready and all(t.get(k) == v for k, v in subset.items())
    }
    assert got == want
    # A subset never selects more than the whole service.
    assert got <= {(e.address, e.port) for e in snapshot.endpoints({"kuma.io/service": "backend"})}


def test_endpoint_address_prefers_advertised_then_inbound_address():
    dp = parse_dataplane(
        """
type: Dataplane
mesh: default
name: a
networking:
  address: 127.0.0.2
  advertisedAddress: 127.0.0.9
  inbound:
  - {port: 1000, servicePort: 1001, tags: {kuma.io/service: s}}
""",
        "a.yaml",
    )
    assert [
        (e.address, e.port)
        for e in MeshSnapshot("default", (dp,)).endpoints({"kuma.io/service": "s"})
    ] == [("127.0.0.9", 1000)]
    dp2 = parse_dataplane(
        """
type: Dataplane
mesh: default
name: b
networking:
  address: 127.0.0.2
  inbound:
  - {port: 1000, address: 127.0.0.3, servicePort: 1001, tags: {kuma.io/service: s}}
  - {port: 1002, servicePort: 1003, state: NotReady, tags: {kuma.io/service: s}}
""",
        "b.yaml",
    )
    assert [
        (e.address, e.port)
        for e in MeshSnapshot("default", (dp2,)).endpoints({"kuma.io/service": "s"})
    ] == [("127.0.0.3", 1000)]


def test_mesh_directory_skips_broken_files_and_other_meshes(tmp_path: Path):
    (tmp_path / "good.yaml").write_text(
        "type: Dataplane\nmesh: default\nname: good\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n  - {port: 1000, servicePort: 1001, tags: {kuma.io/service: s}}\n"
    )
    (tmp_path / "other.yaml").write_text(
        "type: Dataplane\nmesh: other\nname: o\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n  - {port: 2000, servicePort: 2001, tags: {kuma.io/service: s}}\n"
    )
    (tmp_path / "broken.yaml").write_text("type: Dataplane\nname: [unclosed\n")
    (tmp_path / "policy.yaml").write_text("type: MeshTrafficPermission\nname: p\nmesh: default\n")
    (tmp_path / "notes.txt").write_text("ignored")
    directory = MeshDirectory(tmp_path, "default")
    assert directory.scan()
    snap = directory.snapshot
    assert [m.name for m in snap.members] == ["good"]
    assert list(snap.errors) == [str(tmp_path / "broken.yaml")]
    assert "line" in snap.errors[str(tmp_path / "broken.yaml")]
    assert [d["name"] for _, d in snap.documents_of_kind("MeshTrafficPermission")] == ["p"]
    assert not directory.scan(), "nothing changed, nothing re-read"
    (tmp_path / "broken.yaml").unlink()
    assert directory.scan() and not directory.snapshot.errors


def test_the_mesh_resource_switches_passthrough(tmp_path: Path):
    directory = MeshDirectory(tmp_path, "demo")
    directory.scan()
    assert directory.snapshot.passthrough  # no Mesh resource: Kuma's default
    mesh = tmp_path / "mesh.yaml"
    # A Mesh is matched by its name (it belongs to no mesh); another mesh's is not ours.
    mesh.write_text(
        "type: Mesh\nname: demo\nnetworking:\n  outbound:\n    passthrough: false\n---\n"
        "type: Mesh\nname: other\nnetworking: {outbound: {passthrough: true}}\n"
    )
    assert directory.scan() and directory.snapshot.passthrough is False
    assert not directory.snapshot.errors
    mesh.write_text("type: Mesh\nname: demo\nmtls: {}\n")  # no networking: the default
    assert directory.scan() and directory.snapshot.passthrough is True


def test_a_bad_mesh_resource_is_named_and_skipped(tmp_path: Path):
    directory = MeshDirectory(tmp_path, "default")
    bad = tmp_path / "mesh.yaml"
    bad.write_text("type: Mesh\nname: default\nnetworking: {outbound: {passthrough: 'no'}}\n")
    directory.scan()
    assert directory.snapshot.errors == {
        str(bad): f"{bad}: networking.outbound.passthrough: must be a boolean, not 'no'"
    }
    assert directory.snapshot.passthrough  # skipped: the default holds
    bad.write_text("type: Mesh\nname: default\nnetworking: {outbound: [passthrough]}\n")
    directory.scan()
    assert directory.snapshot.errors[str(bad)] == f"{bad}: networking.outbound: must be an object"
    first = tmp_path / "a.yaml"
    first.write_text("type: Mesh\nname: default\nnetworking: {outbound: {passthrough: false}}\n")
    bad.write_text("type: Mesh\nname: default\n")
    directory.scan()
    assert directory.snapshot.errors[str(bad)] == (
        f"{bad}: a second Mesh named 'default' (the first is in {first})"
    )
    assert directory.snapshot.passthrough is False  # the first one's word


def test_plan_names_listeners_and_clusters_as_envoy_does():
    dp = parse_dataplane(
        """
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10000, servicePort: 10001, tags: {kuma.io/service: web}}
  outbound:
  - {port: 20000, tags: {kuma.io/service: backend}}
  - {port: 20001, tags: {kuma.io/service: backend, version: v2}}
""",
        "web.yaml",
    )
    plans = plan_listeners(dp)
    inbound = plans[("127.0.0.1", 10000)]
    assert (inbound.name, inbound.cluster, inbound.target) == (
        "inbound:127.0.0.1:10000",
        "localhost:10001",
        ("127.0.0.1", 10001),
    )
    assert inbound.connect_timeout == 10.0 and inbound.idle_timeout == 7200.0
    outbound = plans[("127.0.0.1", 20000)]
    assert (outbound.name, outbound.cluster) == ("outbound:127.0.0.1:20000", "backend")
    assert outbound.connect_timeout == 5.0 and outbound.idle_timeout == 3600.0
    assert plans[("127.0.0.1", 20001)].cluster == "backend_version_v2"


def test_a_broken_file_is_reported_once_while_other_files_change(tmp_path: Path, caplog):
    """Every change in the directory rebuilds the snapshot (a sidecar's own health file is
    rewritten whenever an inbound's health moves): a file still broken the same way is not
    reported again; one broken another way, or broken again after a fix, is."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: Dataplane\nname: [unclosed\n")
    health = tmp_path / "web.health.yaml"
    directory = MeshDirectory(tmp_path, "default")
    caplog.set_level("WARNING", logger="sidecar.mesh")

    def reports() -> int:
        return sum("event=mesh_file_skipped" in r.getMessage() for r in caplog.records)

    assert directory.scan() and reports() == 1
    for not_ready in ("", "12000", ""):
        health.write_text(f"notReady: [{not_ready}]\n")
        assert directory.scan()
    assert reports() == 1
    broken.write_text("type: Dataplane\nname: web\nnetworking: {}\n")  # broken another way
    assert directory.scan() and reports() == 2
    broken.unlink()
    assert directory.scan() and not directory.snapshot.errors
    broken.write_text("type: Dataplane\nname: web\nnetworking: {}\n")  # back, as it was
    assert directory.scan() and reports() == 3
