"""The router's header policy for each direction (sidecar.http.router `outbound_headers`,
`inbound_headers`): what is taken out, what is added, what is kept in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar import defaults
from sidecar.http.exchange import RequestHead, strip_hop_by_hop
from sidecar.http.router import inbound_headers, outbound_headers

ORIG = defaults.ORIG_PROTO_HEADER
XFCC = b"x-forwarded-client-cert"


def make_head(headers: list[tuple[bytes, bytes]], version: bytes = b"2") -> RequestHead:
    """A GET for `backend` with these fields, as a peer sidecar (HTTP/2) or an app sends it."""
    return RequestHead(
        b"GET", b"http", b"backend", b"/", headers=list(headers), http_version=version
    )


def test_inbound_takes_out_the_hop_header_and_what_is_never_trusted() -> None:
    head = make_head(
        [
            (b"accept", b"*/*"),
            (b"host", b"spoofed"),
            (XFCC, b"URI=spiffe://default/forged"),
            (b"x-request-id", b"id-1"),
            (ORIG, b"HTTP/1.1"),
        ]
    )
    orig = inbound_headers(head, "spiffe://default/web")
    assert orig == b"HTTP/1.1"
    assert head.headers == [
        (b"accept", b"*/*"),
        (b"x-request-id", b"id-1"),
        (XFCC, b"URI=spiffe://default/web"),
    ]


def test_inbound_without_anything_to_take_out_keeps_the_list_and_adds_no_xfcc_unverified() -> None:
    received = [(b"accept", b"*/*"), (b"accept", b"text/plain"), (b"x-b3-traceid", b"1")]
    head = make_head(received)
    assert inbound_headers(head, None) is None
    assert head.headers == received


def test_inbound_strips_hop_by_hop_and_the_headers_connection_names() -> None:
    head = make_head(
        [(b"connection", b"x-secret"), (b"x-secret", b"1"), (b"te", b"trailers"), (b"a", b"b")]
    )
    inbound_headers(head, None)
    assert head.headers == [(b"te", b"trailers"), (b"a", b"b")]


names = st.sampled_from(
    [ORIG, XFCC, b"host", b"accept", b"x-request-id", b"user-agent", b"connection", b"te"]
)
fields = st.lists(st.tuples(names, st.sampled_from([b"a", b"HTTP/1.0", b"HTTP/1.1", b""])))


@given(fields, st.one_of(st.none(), st.just("spiffe://default/web")))
def test_inbound_headers_as_the_rule_says(headers, identity) -> None:
    """Against the rule written as plainly as it reads: the last hop header's value is
    returned, every hop header, XFCC and Host taken out, the rest kept in order (then
    hop-by-hop stripped as everywhere), XFCC set from the verified identity only."""
    head = make_head(headers)
    orig = inbound_headers(head, identity)
    expected_orig = None
    kept = []
    for k, v in headers:
        if k == ORIG:
            expected_orig = v
        elif k not in (XFCC, b"host"):
            kept.append((k, v))
    if identity is not None:
        kept.append((XFCC, b"URI=" + identity.encode()))
    assert orig == expected_orig
    assert head.headers == strip_hop_by_hop(kept)


def test_outbound_adds_what_envoy_adds_and_remembers_an_http1_origin() -> None:
    head = make_head([(b"host", b"backend"), (b"accept", b"*/*"), (ORIG, b"forged")], b"1.1")
    outbound_headers(head, ("127.0.0.9", 5000))
    names = [k for k, _ in head.headers]
    assert names == [b"accept", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", ORIG]
    assert dict(head.headers)[b"x-forwarded-for"] == b"127.0.0.9"
    assert dict(head.headers)[ORIG] == b"HTTP/1.1"


def test_inbound_drops_every_hop_header_when_the_last_is_not_the_only_one() -> None:
    """The slice for the usual peer sidecar's list (our hop header last, nothing else to drop)
    must not keep an earlier hop header or anything else to take out."""
    head = make_head([(ORIG, b"HTTP/1.0"), (b"accept", b"*/*"), (ORIG, b"HTTP/1.1")])
    assert inbound_headers(head, None) == b"HTTP/1.1"
    assert head.headers == [(b"accept", b"*/*")]
    head = make_head([(b"host", b"spoofed"), (b"accept", b"*/*"), (ORIG, b"HTTP/1.1")])
    assert inbound_headers(head, None) == b"HTTP/1.1"
    assert head.headers == [(b"accept", b"*/*")]
    head = make_head([(b"accept", b"*/*"), (ORIG, b"HTTP/1.1")])
    assert inbound_headers(head, None) == b"HTTP/1.1"
    assert head.headers == [(b"accept", b"*/*")]


def test_outbound_looks_again_at_what_connection_named() -> None:
    """A forwarded-for that Connection names is stripped: the one added is the client alone."""
    head = make_head(
        [(b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"10.0.0.1")], b"1.1"
    )
    outbound_headers(head, ("127.0.0.9", 5000))
    assert dict(head.headers)[b"x-forwarded-for"] == b"127.0.0.9"


def strip_plainly(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 9110 7.6.1 and RFC 9113 8.2.2 as they read: Connection and what it names, the fixed
    connection-specific fields, and TE unless it says `trailers` (then `te: trailers`)."""
    named = set()
    for k, v in headers:
        if k == b"connection":
            named |= {t.strip().lower() for t in v.split(b",") if t.strip()}
    fixed = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
    out = []
    for k, v in headers:
        if k == b"te":
            if b"trailers" in [t.strip().lower() for t in v.split(b",")]:
                out.append((k, b"trailers"))
        elif k not in fixed | {b"http2-settings"} and k not in named:
            out.append((k, v))
    return out


hop_names = st.sampled_from(
    [b"te", b"connection", b"keep-alive", b"upgrade", b"accept", b"content-type", b"x-a"]
)
hop_values = st.sampled_from([b"trailers", b"Trailers", b" trailers", b"gzip, trailers", b"x-a"])


@given(st.lists(st.tuples(hop_names, hop_values), max_size=6))
def test_strip_hop_by_hop_as_the_rfcs_read(headers) -> None:
    """Whichever path it takes (nothing to strip, gRPC's `te: trailers` alone, or the walk),
    and with the names given or not."""
    assert strip_hop_by_hop(list(headers)) == strip_plainly(headers)
    assert strip_hop_by_hop(list(headers), dict(headers)) == strip_plainly(headers)


def test_grpc_te_trailers_alone_keeps_the_list() -> None:
    headers = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    assert strip_hop_by_hop(headers) is headers
    twice = [(b"te", b"trailers"), (b"te", b"gzip")]
    assert strip_hop_by_hop(twice) == [(b"te", b"trailers")]
