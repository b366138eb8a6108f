"""The mesh directory: our stand-in for a control plane.

Every Dataplane file of the same mesh in the directory is a member; an outbound's endpoints are the
serving inbounds of all members whose tags contain the outbound's tags. Documents of other kinds
(MeshTrafficPermission, …) are kept for the policy layer, and the mesh's own `Mesh` resource
(matched by its name) for what it switches (passthrough). A broken file is reported and skipped;
the rest of the mesh keeps working. Reading is incremental: a file is parsed again only when its
size, mtime or inode changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sidecar.config import model
from sidecar.config.dataplane import ConfigError, dataplane_from_document, read_documents

log = logging.getLogger("sidecar.mesh")

# Each protocol and the more general ones it falls back to (Kuma's chains).
_CHAINS: dict[str, tuple[str, ...]] = {
    "grpc": ("grpc", "http2", "tcp"),
    "http2": ("http2", "tcp"),
    "http": ("http", "tcp"),
    "kafka": ("kafka", "tcp"),
    "tcp": ("tcp",),
}

YAML_SUFFIXES = (".yaml", ".yml")

# A member's sidecar reports its inbounds' health (service probes, drain) in a document of this
# kind, `<name>.health.yaml` (written by sidecar.observe.probes): `inbound: [{port, ready}]`.
HEALTH_KIND = "DataplaneHealth"
# The mesh's own resource (`type: Mesh`, `name: <mesh>`); read here: `networking.outbound.
# passthrough` (Kuma's switch for destinations outside the mesh under transparent proxying).
MESH_KIND = "Mesh"


def common_protocol(protocols: Iterable[str]) -> str:
    """The protocol common to all endpoints: grpc+http2 → http2, http+http2 → tcp, none → tcp."""
    chains = [_CHAINS.get(p, ("tcp",)) for p in protocols]
    if not chains:
        return "tcp"
    others = [set(c) for c in chains[1:]]
    return next(p for p in chains[0] if all(p in o for o in others))


@dataclass(frozen=True)
class Endpoint:
    """One inbound of one member, as other members dial it."""

    address: str  # IP or DNS name; the runtime resolves names
    port: int
    tags: Mapping[str, str]
    dataplane: str
    protocol: str | None  # as declared; None when the inbound declares none

    @property
    def service(self) -> str:
        return self.tags[model.SERVICE_TAG]


def member_endpoints(dataplane: model.Dataplane) -> list[Endpoint]:
    net = dataplane.networking
    return [
        Endpoint(
            address=net.advertised_address or inbound.address,
            port=inbound.port,
            tags=inbound.tags,
            dataplane=dataplane.name,
            protocol=inbound.declared_protocol,
        )
        for inbound in net.inbound
        if inbound.serving
    ]


def selects(selector: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class MeshSnapshot:
    """The members of one mesh at one moment, and what can be derived from them."""

    mesh: str
    members: tuple[model.Dataplane, ...] = ()
    documents: tuple[tuple[str, dict[str, Any]], ...] = ()  # (file, document) of other kinds
    errors: Mapping[str, str] = field(default_factory=dict)  # file → message

    def endpoints(self, selector: Mapping[str, str]) -> tuple[Endpoint, ...]:
        not_ready = self.not_ready
        return tuple(
            ep
            for member in self.members
            for ep in member_endpoints(member)
            if selects(selector, ep.tags) and (ep.dataplane, ep.port) not in not_ready
        )

    @cached_property
    def not_ready(self) -> frozenset[tuple[str, int]]:
        """(dataplane, inbound port) that the member's sidecar reports not ready."""
        out = set()
        for _, doc in self.documents_of_kind(HEALTH_KIND):
            entries = doc.get("inbound")
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict) and entry.get("ready") is False:
                    out.add((str(doc.get("name")), entry.get("port")))
        return frozenset(out)

    def service_protocol(self, service: str) -> str | None:
        """Kuma's common protocol of the service's endpoints (undeclared counts as tcp), or None
        when no endpoint declares one: then the outbound sniffs."""
        declared = [  # health does not change what a service speaks: count every inbound
            inbound.declared_protocol
            for member in self.members
            for inbound in member.networking.inbound
            if inbound.tags.get(model.SERVICE_TAG) == service
        ]
        if not any(declared):
            return None
        return common_protocol(p or "tcp" for p in declared)

    def documents_of_kind(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(f, d) for f, d in self.documents if d.get("type") == kind]

    @cached_property
    def passthrough(self) -> bool:
        """Whether connections to destinations outside the mesh are relayed (transparent
        proxying): the Mesh resource's `networking.outbound.passthrough`, true without one."""
        for _, doc in self.documents_of_kind(MESH_KIND):
            value = _mesh_passthrough(doc)
            if value is not None:
                return value
        return True


class MeshDirectory:
    """Reads a mesh directory, re-parsing only files that changed since the last `scan`."""

    def __init__(self, directory: str | Path, mesh: str) -> None:
        self.directory = Path(directory)
        self.mesh = mesh
        self._cache: dict[str, tuple[tuple[int, int, int], list[Any] | str]] = {}
        self.snapshot = MeshSnapshot(mesh)

    def scan(self) -> bool:
        """Re-read the directory; True when anything changed (the snapshot was replaced)."""
        seen: dict[str, tuple[tuple[int, int, int], list[Any] | str]] = {}
        changed = False
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("event=mesh_dir_unreadable dir=%s error=%s", self.directory, exc.strerror)
            entries = []
        for entry in entries:
            if not entry.name.endswith(YAML_SUFFIXES) or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._cache.get(entry.path)
            if cached is not None and cached[0] == signature:
                seen[entry.path] = cached
                continue
            changed = True
            seen[entry.path] = (signature, _read(entry.path))
        if set(seen) != set(self._cache):
            changed = True
        self._cache = seen
        if changed:
            self.snapshot = self._build()
        return changed

    def _build(self) -> MeshSnapshot:
        members: list[model.Dataplane] = []
        documents: list[tuple[str, dict[str, Any]]] = []
        errors: dict[str, str] = {}
        mesh_files: list[str] = []  # where this mesh's Mesh resource was found
        for path, (_, parsed) in self._cache.items():
            if isinstance(parsed, str):
                errors[path] = parsed
                continue
            for doc in parsed:
                if not isinstance(doc, dict):
                    continue
                if doc.get("type") == MESH_KIND:  # a mesh's own resource: by its name
                    if doc.get("name") == self.mesh:
                        error = _mesh_error(doc, path, mesh_files)
                        if error is not None:
                            errors[path] = error
                            continue
                        mesh_files.append(path)
                        documents.append((path, doc))
                    continue
                if doc.get("mesh", "default") != self.mesh:
                    continue
                if doc.get("type") == "Dataplane":
                    try:
                        members.append(dataplane_from_document(doc, path))
                    except ConfigError as exc:
                        errors[path] = str(exc)
                else:
                    documents.append((path, doc))
        # Once per file and message, as PolicySet reports policies: a rebuild is taken for any
        # change in the directory (each sidecar's own health file among them), and a file that
        # is still broken the same way has been reported already.
        reported = self.snapshot.errors
        for path, message in errors.items():
            if reported.get(path) != message:
                log.warning("event=mesh_file_skipped file=%s error=%r", path, message)
        return MeshSnapshot(self.mesh, tuple(members), tuple(documents), errors)


def _mesh_passthrough(doc: dict[str, Any]) -> bool | None:
    networking = doc.get("networking")
    outbound = networking.get("outbound") if isinstance(networking, dict) else None
    return outbound.get("passthrough") if isinstance(outbound, dict) else None


def _mesh_error(doc: dict[str, Any], path: str, found_in: list[str]) -> str | None:
    """Why a Mesh resource cannot be used (the file and field path), or None."""
    if found_in:
        return f"{path}: a second Mesh named {doc.get('name')!r} (the first is in {found_in[0]})"
    for field_path in ("networking", "networking.outbound"):
        value: Any = doc
        for part in field_path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, dict):
            return f"{path}: {field_path}: must be an object"
    value = _mesh_passthrough(doc)
    if value is not None and not isinstance(value, bool):
        return f"{path}: networking.outbound.passthrough: must be a boolean, not {value!r}"
    return None


def _read(path: str) -> list[Any] | str:
    """The documents of one file, or the error message that makes it unusable."""
    try:
        with open(path) as f:
            text = f.read()
        return read_documents(text, path)
    except ConfigError as exc:
        return str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: cannot read: {exc}"
