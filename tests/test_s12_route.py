"""Session 12's cuts in the router and its counting, each checked against what it must keep:

- a body with trailers is sent chunk by chunk and then ended with them, without awaiting `read`
  once the last chunk is taken (`_send_body`);
- the usual outbound request (nothing to drop or rewrite) gets the fields Envoy adds in one step,
  as the general path would add them (`outbound_headers`);
- gRPC calls are counted by their grpc-status (trailers first, then the head), the status made a
  stats key once per usual code, "-" for none (`RequestAccounting.grpc_response_ended`).

The whole request body of one chunk sent from `_attempt`, and the response streamed from it, are
checked end to end by the gRPC and HTTP suites (tests/test_observe_http.py counts the messages).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import defaults
from sidecar.http.accounting import RequestAccounting
from sidecar.http.exchange import Body, RequestHead, strip_hop_by_hop
from sidecar.http.router import _send_body, outbound_headers
from sidecar.observe.stats import ClusterStats, HttpStats


class Sink:
    """Records what `_send_body` asks of an exchange or upstream stream."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    async def finish(self, trailers: Any = None, last: bytes = b"") -> None:
        self.calls.append(("finish", trailers, last))


def test_a_body_with_trailers_ends_without_a_read_after_its_last_chunk(monkeypatch) -> None:
    reads: list[Body] = []
    read = Body.read

    def counted_read(self: Body) -> Any:
        reads.append(self)
        return read(self)

    monkeypatch.setattr(Body, "read", counted_read)
    trailers = [(b"grpc-status", b"0")]
    body = Body()
    for chunk in (b"a", b"b", b"c"):
        body.feed(chunk)
    body.end(trailers)
    sink, counted = Sink(), []
    asyncio.run(_send_body(body, sink, counted.append))  # type: ignore[arg-type]
    assert sink.calls == [
        ("write", b"a"),
        ("write", b"b"),
        ("write", b"c"),
        ("finish", trailers, b""),
    ]
    assert counted == [b"a", b"b", b"c"]
    assert reads == []  # every chunk was queued, and the end known once the last was taken


def test_a_body_still_coming_is_read_to_its_trailers() -> None:
    async def scenario() -> list[tuple[Any, ...]]:
        body, sink = Body(), Sink()
        body.feed(b"a")
        task = asyncio.ensure_future(_send_body(body, sink, None))  # type: ignore[arg-type]
        while sink.calls != [("write", b"a")]:
            await asyncio.sleep(0)
        body.feed(b"b")
        body.end([(b"grpc-status", b"0")])
        await asyncio.wait_for(task, 5)
        return sink.calls

    calls = asyncio.run(scenario())
    assert calls == [("write", b"a"), ("write", b"b"), ("finish", [(b"grpc-status", b"0")], b"")]


def _grpc_call() -> tuple[RequestAccounting, ClusterStats]:
    cluster = ClusterStats("echo")
    head = RequestHead(
        b"POST", b"http", b"echo", b"/e.E/U", [(b"content-type", b"application/grpc")]
    )
    acct = RequestAccounting(HttpStats("p"), cluster, head, None, None)
    assert acct.grpc
    return acct, cluster


@pytest.mark.parametrize(
    ("trailers", "headers", "key"),
    [
        ([(b"grpc-status", b"0")], [(b"grpc-status", b"5")], "0"),  # the trailers' first
        ([(b"grpc-message", b"m")], [(b"grpc-status", b"5")], "5"),  # then the head's
        (None, [(b"grpc-status", b"16")], "16"),  # a trailers-only response
        ([(b"grpc-status", b"3"), (b"grpc-status", b"0")], [], "3"),  # the first one
        ([], [], "-"),  # none
        ([(b"grpc-status", b"")], [], "-"),  # an empty one
        ([(b"grpc-status", b"42")], [], "42"),  # not one of gRPC's codes
        ([(b"grpc-status", b"\xff")], [], "\ufffd"),  # not ASCII
    ],
)
def test_grpc_calls_are_counted_by_their_status(trailers, headers, key) -> None:
    acct, cluster = _grpc_call()
    acct.request_chunk(b"\0\0\0\0\0")
    acct.grpc_response_ended(headers, trailers)
    assert cluster.grpc_status == {key: 1}
    assert cluster.grpc_total == 1
    assert (cluster.grpc_success, cluster.grpc_failure) == ((1, 0) if key == "0" else (0, 1))
    assert cluster.grpc_request_message_count == 1 and cluster.grpc_response_message_count == 0


# -- outbound_headers: the usual request's single step against the rule as it reads ------------

ORIG = defaults.ORIG_PROTO_HEADER
_names = st.sampled_from(
    [b"host", ORIG, b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"accept"]
    + [b"connection", b"te", b"user-agent"]
)
_fields = st.lists(st.tuples(_names, st.sampled_from([b"a", b"trailers", b"x-forwarded-for"])))


@given(
    _fields,
    st.sampled_from([b"1.1", b"1.0", b"2"]),
    st.sampled_from([b"http", b"https", b""]),
    st.one_of(st.none(), st.just(("127.0.0.9", 5000))),
)
def test_outbound_headers_as_the_rule_says(headers, version, scheme, peer) -> None:
    """Hop-by-hop stripped; Host and a forged hop header dropped; the client appended to the
    first forwarded-for (or one added); forwarded-proto and a request id added when missing;
    the HTTP/1 origin last. The usual request (none of those names) takes a step of its own."""
    given_list = list(headers)
    head = RequestHead(b"GET", scheme, b"backend", b"/", given_list, http_version=version)
    outbound_headers(head, peer)
    expected = [(k, v) for k, v in strip_hop_by_hop(headers) if k not in (b"host", ORIG)]
    names = {k for k, _ in expected}
    if peer is not None:
        if b"x-forwarded-for" in names:
            i = next(i for i, (k, _) in enumerate(expected) if k == b"x-forwarded-for")
            expected[i] = (b"x-forwarded-for", expected[i][1] + b", 127.0.0.9")
        else:
            expected.append((b"x-forwarded-for", b"127.0.0.9"))
    if b"x-forwarded-proto" not in names:
        expected.append((b"x-forwarded-proto", scheme or b"http"))
    added_id = b"x-request-id" not in names
    if added_id:
        expected.append((b"x-request-id", b"?"))
    if version != b"2":
        expected.append((ORIG, b"HTTP/" + version))
    got = head.headers
    assert got is not given_list and given_list == headers  # the app's list is left as it was
    if added_id:
        i = [k for k, _ in expected].index(b"x-request-id")
        assert len(got[i][1]) == 36
        got = got[:i] + [(b"x-request-id", b"?")] + got[i + 1 :]
    assert got == expected
