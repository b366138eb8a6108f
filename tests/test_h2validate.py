"""`received_headers` (sidecar.http.h2validate) checks a received header block in one pass, as h2's
`H2Stream._process_received_headers` does with its generator pipeline: against a real h2 stream
as the reference, over random blocks (pseudo-header fields valid and not, in any order, repeated;
names and values with bad characters; connection-specific fields; Host against :authority;
cookies; CONNECT), every set of validation flags and every configuration, it returns the same
list (the same field objects, the joined cookie field of the same class) or raises the same
exception class with the same message.
"""

from __future__ import annotations

import sys

import h2.config
import h2.stream
import h2.utilities
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http import h2validate
from sidecar.http.h2validate import received_headers

# Deterministic (the same examples every run), and no per-example deadline.
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# Examples per differential test (each block compared with what h2 itself does with it): 300,
# not 1,000, keeps the suite's time in bounds; a longer hunt can raise it here.
EXAMPLES = 300

ALL_FLAGS = [
    h2.utilities.HeaderValidationFlags(client, trailer, response, push)
    for client in (False, True)
    for trailer in (False, True)
    for response in (False, True)
    for push in (False, True)
]
REQUEST = h2.utilities.HeaderValidationFlags(False, False, False, False)
RESPONSE = h2.utilities.HeaderValidationFlags(True, False, True, False)
TRAILERS = h2.utilities.HeaderValidationFlags(False, True, False, False)
CONFIGS = [(True, True), (True, False), (False, True), (False, False)]

PSEUDO = [b":method", b":scheme", b":authority", b":path", b":status", b":protocol"]
NAMES = PSEUDO + [
    b":foo",
    b":",
    b"content-type",
    b"user-agent",
    b"grpc-timeout",
    b"x-custom",
    b"te",
    b"host",
    b"cookie",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"",
    b"Content-Type",
    b"x-Upper",
    b"a:b",
    b"::path",
    b"x y",
    b"x\x00y",
    b"x\ty",
    b"\x7f",
    b"caf\xe9",
    b"x-a:B",
]
VALUES = [
    b"GET",
    b"POST",
    b"CONNECT",
    b"http",
    b"https",
    b"/",
    b"/pkg.Svc/Method",
    b"",
    b"200",
    b"100",
    b"trailers",
    b"TraiLers",
    b"gzip",
    b"example.com",
    b"other.com",
    b"websocket",
    b"a=1",
    b" a",
    b"a ",
    b"\ta",
    b"a\t",
    b" ",
    b"a\x00b",
    b"a\rb",
    b"a\nb",
    b"a\x7fb",
    b"\xff\xfe",
    b"a b",
]
names = st.one_of(st.sampled_from(NAMES), st.binary(max_size=6))
values = st.one_of(st.sampled_from(VALUES), st.binary(max_size=6))


def _field(kind, name, value):
    if kind == "tuple":
        return (name, value)
    if kind == "never":
        return NeverIndexedHeaderTuple(name, value)
    return HeaderTuple(name, value)


fields = st.builds(_field, st.sampled_from(["tuple", "header", "never"]), names, values)


TEMPLATES = {
    "request": [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pkg.Svc/Method"),
        (b":authority", b"example.com"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"host", b"example.com"),
        (b"cookie", b"a=1"),
    ],
    "request with Host": [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b"host", b"example.com"),
    ],
    "connect": [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
    "extended connect": [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":path", b"/chat"),
        (b":authority", b"example.com"),
        (b"cookie", b"b=2"),
    ],
    "response": [(b":status", b"200"), (b"content-type", b"application/grpc")],
    "trailers": [(b"grpc-status", b"0"), (b"cookie", b"c=3"), (b"grpc-message", b"")],
}
EXTRA_FIELDS = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":path", b""),
    (b":authority", b"other.com"),
    (b":status", b"204"),
    (b":protocol", b"websocket"),
    (b"host", b"example.com"),
    (b"host", b"other.com"),
    (b"cookie", b"d=4"),
    (b"cookie", b""),
    (b"te", b"trailers"),
    (b"x-custom", b"v"),
]


@st.composite
def shaped_blocks(draw):
    """Blocks near valid ones, with flags (mostly those of the block's kind): a valid request,
    CONNECT, response or trailers, then a few of: a field dropped, repeated, moved, added (of
    those a block may have, or any), or its value replaced."""
    role = draw(st.sampled_from(sorted(TEMPLATES)))
    block = list(TEMPLATES[role])
    trailer, response = role == "trailers", role == "response"
    flags = draw(
        st.one_of(
            st.sampled_from(
                [
                    f
                    for f in ALL_FLAGS
                    if (f.is_trailer, f.is_response_header) == (trailer, response)
                ]
            ),
            st.sampled_from(ALL_FLAGS),
        )
    )
    extra = st.one_of(st.sampled_from(EXTRA_FIELDS), st.tuples(names, values))
    extra = st.one_of(st.sampled_from(EXTRA_FIELDS), extra)
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "repeat", "move", "add", "value"]))
        if how == "add" or not block:
            block.insert(draw(st.integers(0, len(block))), draw(extra))
            continue
        i = draw(st.integers(0, len(block) - 1))
        if how == "drop":
            del block[i]
        elif how == "repeat":
            block.insert(draw(st.integers(0, len(block))), block[i])
        elif how == "move":
            block.insert(draw(st.integers(0, len(block) - 1)), block.pop(i))
        else:
            block[i] = (block[i][0], draw(values))
    kind = st.sampled_from(["tuple", "header", "never"])
    return [_field(draw(kind), name, value) for name, value in block], flags


def _h2(headers, flags, validate, normalize):
    """The reference: a real h2 stream's `_process_received_headers`, as sidecar.http.h2 calls
    it."""
    config = h2.config.H2Configuration(
        validate_inbound_headers=validate, normalize_inbound_headers=normalize
    )
    stream = h2.stream.H2Stream(1, config, 65535, 65535)
    return stream._process_received_headers(headers, flags, None)


def _outcome(fn, headers, flags, validate, normalize):
    try:
        result = fn(list(headers), flags, validate, normalize)
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return "error", type(exc), str(exc)
    return "ok", result


def _assert_same(headers, flags, validate, normalize):
    ours = _outcome(received_headers, headers, flags, validate, normalize)
    theirs = _outcome(_h2, headers, flags, validate, normalize)
    if theirs[0] == "error":
        assert ours == theirs, (headers, flags, validate, normalize)
        return
    assert ours[0] == "ok", (ours, headers, flags, validate, normalize)
    mine, ref = ours[1], theirs[1]
    assert type(mine) is list
    assert [(type(h), tuple(h)) for h in mine] == [(type(h), tuple(h)) for h in ref]
    for a, b in zip(mine, ref, strict=True):
        # The fields h2 passes through are the very objects received; only the joined cookie
        # field is new.
        assert a is b or (normalize and a[0] == b"cookie" and type(a) is NeverIndexedHeaderTuple)


@settings(FUZZ, max_examples=EXAMPLES)
@given(
    st.lists(fields, max_size=8),
    st.sampled_from(ALL_FLAGS),
    st.sampled_from(CONFIGS),
)
def test_random_blocks_as_h2_takes_them(headers, flags, config):
    _assert_same(headers, flags, *config)


@settings(FUZZ, max_examples=EXAMPLES)
@given(shaped_blocks(), st.sampled_from(CONFIGS))
def test_nearly_valid_blocks_as_h2_takes_them(block, config):
    _assert_same(*block, *config)


@settings(FUZZ, max_examples=EXAMPLES)
@given(shaped_blocks(), st.sampled_from(CONFIGS))
def test_blocks_seen_before_as_h2_takes_them(block, config):
    """The second time a block comes, its indexed regular fields are found among those already
    checked (`_VALID`): the outcome is still h2's, with the cache empty, full, or in between."""
    h2validate._VALID.clear()
    _assert_same(*block, *config)
    _assert_same(*block, *config)


def test_only_indexed_regular_fields_are_remembered_and_the_memory_is_bounded(monkeypatch):
    h2validate._VALID.clear()
    per_request = (b"x-request-id", b"0f8fad5b")  # sent without indexing: a plain tuple
    received_headers([*GRPC_REQUEST, per_request], REQUEST, True, True)
    remembered = {h for h in GRPC_REQUEST if h[0][:1] != b":" and h[0] != b"te"}
    assert h2validate._VALID == remembered
    monkeypatch.setattr(h2validate, "_VALID_MAX", len(remembered))
    extra = HeaderTuple(b"x-extra", b"1")
    received_headers([*GRPC_REQUEST, extra], REQUEST, True, True)
    assert h2validate._VALID == {extra}  # full: forgotten all at once, then the new one


GRPC_REQUEST = [
    HeaderTuple(b":method", b"POST"),
    HeaderTuple(b":scheme", b"http"),
    HeaderTuple(b":path", b"/pkg.Svc/Method"),
    HeaderTuple(b":authority", b"localhost:50051"),
    HeaderTuple(b"te", b"trailers"),
    HeaderTuple(b"content-type", b"application/grpc"),
    HeaderTuple(b"user-agent", b"grpc-python/1.62.1 grpc-c/39.0.0 (linux; chttp2)"),
    HeaderTuple(b"grpc-accept-encoding", b"identity, deflate, gzip"),
    HeaderTuple(b"grpc-timeout", b"4999m"),
    HeaderTuple(b"x-request-id", b"0f8fad5b-d9cb-469f-a165-70867728950e"),
]

# One block per rule, each broken in one way (and a few valid ones), with the flags it needs.
CASES = {
    "grpc request": (GRPC_REQUEST, REQUEST),
    "grpc response": ([(b":status", b"200"), (b"content-type", b"application/grpc")], RESPONSE),
    "grpc trailers": ([(b"grpc-status", b"0"), (b"grpc-message", b"")], TRAILERS),
    "upper-case name": ([(b":status", b"200"), (b"Content-Type", b"x")], RESPONSE),
    "space in name": ([(b":status", b"200"), (b"a b", b"x")], RESPONSE),
    "high byte in name": ([(b":status", b"200"), (b"caf\xe9", b"x")], RESPONSE),
    "colon inside name": ([(b":status", b"200"), (b"a:b", b"x")], RESPONSE),
    "upper case before colon": ([(b":status", b"200"), (b"a:B", b"x")], RESPONSE),
    "NUL in value": ([(b":status", b"200"), (b"x", b" a\x00")], RESPONSE),
    "LF in value": ([(b":status", b"200"), (b"x", b"a\nb\rc")], RESPONSE),
    "leading space": ([(b":status", b"200"), (b"x", b" a")], RESPONSE),
    "trailing tab": ([(b":status", b"200"), (b"x", b"a\t")], RESPONSE),
    "empty name": ([(b":status", b"200"), (b"", b"x")], RESPONSE),
    "empty name, bad value": ([(b":status", b"200"), (b"", b"x ")], RESPONSE),
    "te gzip": ([(b":status", b"200"), (b"te", b"gzip")], RESPONSE),
    "te Trailers": ([(b":status", b"200"), (b"te", b"Trailers")], RESPONSE),
    "connection": ([(b":status", b"200"), (b"connection", b"close")], RESPONSE),
    "upgrade": ([(b":status", b"200"), (b"upgrade", b"h2c")], RESPONSE),
    "duplicate pseudo": ([(b":status", b"200"), (b":status", b"200")], RESPONSE),
    "pseudo after regular": ([(b"x", b"1"), (b":status", b"200")], RESPONSE),
    "custom pseudo": ([(b":status", b"200"), (b":foo", b"1")], RESPONSE),
    "custom pseudo late": ([(b":status", b"200"), (b"x", b"1"), (b":foo", b"1")], RESPONSE),
    "pseudo in trailers": ([(b":status", b"200")], TRAILERS),
    "no :status": ([(b"x", b"1")], RESPONSE),
    "request field in response": ([(b":status", b"200"), (b":path", b"/")], RESPONSE),
    "no :method": (GRPC_REQUEST[1:], REQUEST),
    "no :path": (GRPC_REQUEST[:2] + GRPC_REQUEST[3:], REQUEST),
    "empty :path": ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"")], REQUEST),
    ":status in request": ([(b":status", b"200")] + GRPC_REQUEST, REQUEST),
    ":protocol without CONNECT": (GRPC_REQUEST[:4] + [(b":protocol", b"ws")], REQUEST),
    "CONNECT": ([(b":method", b"CONNECT"), (b":authority", b"h:1")], REQUEST),
    "CONNECT with :path": (
        [(b":method", b"CONNECT"), (b":authority", b"h:1"), (b":path", b"/")],
        REQUEST,
    ),
    "extended CONNECT": (
        [(b":method", b"CONNECT"), (b":protocol", b"websocket")] + GRPC_REQUEST[1:4],
        REQUEST,
    ),
    "extended CONNECT without :scheme": (
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":path", b"/"), (b"host", b"h")],
        REQUEST,
    ),
    "no :authority, Host": (GRPC_REQUEST[:3] + [(b"host", b"h")], REQUEST),
    "neither :authority nor Host": (GRPC_REQUEST[:3], REQUEST),
    "Host mismatch": (GRPC_REQUEST + [(b"host", b"elsewhere")], REQUEST),
    "two Hosts": (GRPC_REQUEST[:3] + [(b"host", b"h"), (b"host", b"h")], REQUEST),
    "cookies": (
        [(b"cookie", b"a=1"), *GRPC_REQUEST, NeverIndexedHeaderTuple(b"cookie", b"b=2")],
        REQUEST,
    ),
    "cookie ending empty": (GRPC_REQUEST + [(b"cookie", b"a=1"), (b"cookie", b"")], REQUEST),
    "bad cookie and bad field": ([(b"cookie", b"a\x00"), (b"x", b"b\x00")], RESPONSE),
}


@pytest.mark.parametrize("config", CONFIGS, ids=["both", "validate", "normalize", "neither"])
@pytest.mark.parametrize("case", CASES)
def test_each_rule_as_h2_applies_it(case, config):
    headers, flags = CASES[case]
    _assert_same(headers, flags, *config)


def test_a_grpc_request_passes_unchanged():
    out = received_headers(GRPC_REQUEST, REQUEST, True, True)
    assert out == GRPC_REQUEST and out is not GRPC_REQUEST
    assert all(a is b for a, b in zip(out, GRPC_REQUEST, strict=True))


def test_cookie_fields_are_joined_last_never_indexed():
    block = [
        HeaderTuple(b":status", b"200"),
        HeaderTuple(b"cookie", b"a=1"),
        HeaderTuple(b"x", b"1"),
        (b"cookie", b"b=2"),
    ]
    out = received_headers(block, RESPONSE, True, True)
    assert out == [block[0], block[2], (b"cookie", b"a=1; b=2")]
    assert type(out[-1]) is NeverIndexedHeaderTuple
    assert received_headers(block, RESPONSE, False, False) == block


def test_the_name_table_agrees_with_h2():
    """Names in the table skip the character search: each must pass h2's name checks, and the
    special ones must be exactly h2's."""
    for name in h2validate._KINDS_PLAIN:
        list(h2.utilities._reject_illegal_characters([(name, b"v")], REQUEST))
    assert set(h2validate._PSEUDO) == h2.utilities._ALLOWED_PSEUDO_HEADER_FIELDS
    connection = {n for n, k in h2validate._KINDS_PLAIN.items() if k == h2validate._CONNECTION}
    assert connection == h2.utilities.CONNECTION_HEADERS


def test_a_valid_grpc_block_costs_no_python_call():
    """The point of the module: no Python frame per field, and only a few C calls per block."""
    events = []

    def profile(frame, event, arg):
        events.append(event)

    received_headers(GRPC_REQUEST, REQUEST, True, True)  # its fields are remembered as valid
    sys.setprofile(profile)
    try:
        received_headers(GRPC_REQUEST, REQUEST, True, True)
    finally:
        sys.setprofile(None)
    # The call itself and its return; then the profiler's removal.
    assert events.count("call") == 1
    assert events.count("c_call") <= 2
