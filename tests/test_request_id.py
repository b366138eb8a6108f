"""x-request-id values (sidecar.http.request_id): UUID-4 form, unique, and a forked child
(a worker) does not repeat its parent's ids."""

from __future__ import annotations

import os
import uuid

from sidecar.http.request_id import new_request_id


def test_ids_are_uuid4_and_unique_across_blocks():
    ids = [new_request_id() for _ in range(3000)]  # more than ten blocks of 256
    assert len(set(ids)) == len(ids)
    for raw in ids:
        parsed = uuid.UUID(raw.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == raw  # the canonical lower-case form


def test_a_forked_child_draws_its_own_ids():
    new_request_id()  # the parent has a block in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        try:
            os.write(write, b"".join(new_request_id() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(new_request_id() for _ in range(4))
    assert len(child) == len(parent) == 4 * 36
    assert {child[i : i + 36] for i in range(0, 144, 36)}.isdisjoint(
        parent[i : i + 36] for i in range(0, 144, 36)
    )
