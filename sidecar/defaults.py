"""Every default of pysidecar, written down once.

Values follow Kuma and Envoy where they have one (shared/reference/kuma-envoy-behaviour.md), so a
Kuma user finds what they already know.
"""

ADMIN_PORT = 9901
ADMIN_ADDRESS = "127.0.0.1"
METRICS_PORT = 5670
METRICS_PATH = "/metrics"
PROBES_PORT = 9000
OUTBOUND_ADDRESS = "127.0.0.1"

# Timeouts, in seconds.
OUTBOUND_CONNECT_TIMEOUT = 5.0
INBOUND_CONNECT_TIMEOUT = 10.0
OUTBOUND_IDLE_TIMEOUT = 3600.0
INBOUND_IDLE_TIMEOUT = 7200.0
DRAIN_TIMEOUT = 30.0

# TCP: connect attempts across endpoints before the downstream connection is given up.
TCP_CONNECT_ATTEMPTS = 5

# Service probes (Kuma's defaults).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
PROBE_UNHEALTHY_THRESHOLD = 1
PROBE_HEALTHY_THRESHOLD = 1

# Mesh directory: how often it is rescanned, and how often DNS names are re-resolved.
MESH_POLL_INTERVAL = 0.5
DNS_REFRESH_INTERVAL = 5.0

# Relay buffering: a connection holds at most about this many unsent bytes per direction before
# the reading side is paused (the transport's high-water mark).
RELAY_HIGH_WATER = 256 * 1024
# The relay's own TLS transport (mTLS L4 hop): what one recv may take from the socket for
# OpenSSL to decrypt (about two 16 KiB records per system call); released while empty. Not
# more: OpenSSL 3.0 moves what is left in this buffer to its front before each record (payload
# alignment), so its cost per byte grows with the size; 32 KiB took less CPU per GB on the
# decrypting sidecar than 64 or 128 KiB (bench/README.md, issue 4).
TLS_READ_AHEAD = 32 * 1024
# A resumed mTLS connection of the L4 relay is handed from OpenSSL (~18 KB each) to our own
# record layer (`sidecar.transport.tls_handoff`) once the sidecar holds this many of them:
# loading the AEADs for it maps ~7 MB, which pays from about 400 connections (env
# PYSIDECAR_TLS_HANDOFF_AFTER; 0: from the first)
TLS_HANDOFF_AFTER = 256

# HTTP.
OUTBOUND_REQUEST_TIMEOUT = 15.0  # bounds the wait for the response head; 0 disables
INBOUND_REQUEST_TIMEOUT = 0.0  # Kuma: none on the inbound
OUTBOUND_STREAM_IDLE_TIMEOUT = 1800.0
INBOUND_STREAM_IDLE_TIMEOUT = 3600.0
HTTP_CONNECT_ATTEMPTS = 5  # connect failures are retried on the next endpoint
MAX_REQUEST_HEADERS_BYTES = 60 * 1024  # Envoy: 60 KiB, then 431
# A local app's HTTP/1.1 response head and trailers (sidecar.http.h1wire): Envoy's
# max_response_headers_kb and _count defaults (60 KiB, 100); past either the request fails (503
# before the head, a cut body after it).
# No more: the head then rides the shared mesh connection, whose peer decodes a header list of
# up to twice the limit (MESH_HEADER_LIST_FACTOR); past that it is a connection error there,
# failing every stream on it.
MAX_RESPONSE_HEADERS_BYTES = 60 * 1024
MAX_RESPONSE_HEADERS_COUNT = 100
# A chunk-size line with its extensions (extensions are ignored; a longer line is refused).
MAX_CHUNK_LINE = 1024
# HTTP/2 between sidecars carries many app connections: room for Kuma's 1024 requests per
# cluster on one connection. Toward apps, Envoy-like 100.
MESH_MAX_CONCURRENT_STREAMS = 1024
APP_MAX_CONCURRENT_STREAMS = 100
H2_STREAM_WINDOW = 1024 * 1024
H2_CONNECTION_WINDOW = 16 * 1024 * 1024
H2_MAX_FRAME_SIZE = 256 * 1024
# How many closed streams an HTTP/2 connection remembers (to tell a late frame on a reset stream
# from a protocol error). h2 keeps 65536, about 9 MB on a long-lived connection (136 bytes each);
# a late frame arrives within a round trip, long before 2048 more streams have closed (0.2 s at
# 10,000 requests a second on one connection). Each connection's table fills, then stays: 280 KB.
H2_CLOSED_STREAMS_REMEMBERED = 2048
# Headers our HPACK encoder sends as "never indexed" (RFC 7541 6.2.3), which no intermediary
# may add to a table either: credentials (as h2's own rules, and nghttp2's) and values unique to
# each request, which would only churn a table.
H2_NEVER_INDEXED = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-request-id"}
)
# Headers our HPACK encoder sends as literals *without indexing* (RFC 7541 6.2.2), kept out of the
# peer's dynamic table: values that differ from request to request (or response to response), so
# that an entry would never be used again and would only push out entries that are: nghttp2's
# list (nghttp2_hd.c, `hd_deflate_should_indexing`) and the mesh's per-request id. (The names
# above are never indexed, whether listed here or not.)
H2_NOT_INDEXED = frozenset(
    {
        b":path",
        b"age",
        b"content-length",
        b"etag",
        b"if-modified-since",
        b"if-none-match",
        b"location",
        b"set-cookie",
        b"x-request-id",
    }
)
# A sidecar's HTTP/2 writes wait for the end of the event loop's turn, so that the frames one
# turn makes (a response's HEADERS, DATA and END_STREAM; several streams' frames) leave in one
# write; a DATA payload of at least this many bytes is written at once instead, so that a bulk
# sender meets the transport's back-pressure frame by frame.
H2_WRITE_AT_ONCE = 64 * 1024
# ... and no later than after this many sends in one turn (a stream's HEADERS, its DATA, ...): the
# peer starts on the first requests of a burst while the rest are being made. One write per burst
# made the two sidecars of a pair take turns, each idle while the other worked on the same burst
# (HTTP/1.1 through the pair on 2 cores: 1,500 → 3,800 req/s, bench/README.md "Session 4").
H2_SENDS_PER_WRITE = 4
# An HTTP/2 server connection serves its streams from tasks that take the next stream when
# their handler is done (a task made per request cost B of the pair ~5k instructions a request,
# 2.5 %: asyncio's registry of tasks is Python code in 3.11); this many wait for streams at most,
# ~1 KB each, the rest end with their stream.
H2_IDLE_WORKERS = 32
# A connection refused with a local reply (400, 431, 408...) is closed this long after the reply,
# or when the client closes first; meanwhile its input is dropped (Envoy's delayed_close_timeout).
DELAYED_CLOSE_TIMEOUT = 1.0
BODY_HIGH_WATER = 256 * 1024  # bytes of one body the sidecar holds before pausing its source
# A request body that has arrived whole (a gRPC unary call, a small POST) and is at most this
# long is sent upstream by the router before it waits for the response, when the upstream can
# take it at once; a longer or unfinished body is sent by a task of its own (back-pressure).
INLINE_REQUEST_BODY = 16 * 1024
PROTOCOL_DETECTION_TIMEOUT = 0.1  # sniffing: wait this long for the app's first bytes; 0 = off
# The header that tells a peer's inbound that this request was HTTP/1.x at the app (linkerd's
# l5d-orig-proto); the inbound strips it and speaks HTTP/1.1 to its app.
ORIG_PROTO_HEADER = b"x-pysidecar-orig-proto"

# Transparent proxying (sidecar.plan): the sidecar's connections to its own app leave from this
# address (Kuma's and Istio's InboundPassthroughBindIpv4), which the redirection rules let
# through (`pysidecar transparent-proxy`), so that they are not redirected back to the sidecar.
TRANSPARENT_SOURCE_ADDRESS = "127.0.0.6"
# ... and to an app on an IPv6 address (InboundPassthroughBindIpv6), which, unlike 127.0.0.6, is
# no local address until it is given to the loopback interface: `ip -6 addr add ::6/128 dev lo`.
TRANSPARENT_SOURCE_ADDRESS_V6 = "::6"
# The redirect ports kumactl's transparent proxy uses; `pysidecar transparent-proxy` defaults.
REDIRECT_PORT_OUTBOUND = 15001
REDIRECT_PORT_INBOUND = 15006

# The DNS proxy of transparent proxying (Kuma: kuma-dp's CoreDNS on 127.0.0.1:15053, answering
# `<kuma.io/service>.mesh` from the mesh and asking the host's resolvers for the rest).
DNS_PORT = 15053  # where it listens (UDP and TCP); `--dns-port 0` turns it off
DNS_ADDRESS = "127.0.0.1"  # iptables' REDIRECT of an app's query lands here
DNS_ADDRESS_V6 = "::1"  # ... and ip6tables', with IPv6 redirection (ipFamilyMode DualStack)
DNS_DOMAIN = "mesh"  # the zone it answers for itself
DNS_STAT_PREFIX = "kuma_dns"  # its stats: dns_filter.kuma_dns.* (Kuma's DNS listener's prefix)
DNS_TTL = 60  # seconds, as Kuma's answers (`redis.mesh. 60 IN A 240.0.0.100`)
DNS_UPSTREAM_TIMEOUT = 2.0  # seconds per upstream resolver tried for a forwarded query
DNS_MAX_PENDING_LOOKUPS = 256  # forwarded queries waiting at once (Envoy's DNS filter: 256)
DNS_TCP_IDLE_TIMEOUT = 10.0  # seconds a DNS-over-TCP client may keep a connection idle

# Mesh mTLS (sidecar.identity.mesh).
MTLS_HANDSHAKE_TIMEOUT = 10.0  # inbound: from accept to a verified peer (Kuma's inbound connect)
# Permissive mode tells TLS from plaintext by the first byte; a client silent this long is
# plaintext (a server that speaks first).
PERMISSIVE_DETECTION_TIMEOUT = 0.5
# TLS 1.3 outbound: a peer refuses our certificate only after our handshake is done. Wait this
# long at most for its verdict (a session ticket, data, or an alert) before using the connection.
MTLS_PEER_VERDICT_WAIT = 0.1

# -- Limits (sidecar.limits: each one overridable with --limits FILE or --limit NAME=VALUE) -------
# HTTP downstream: Envoy's max_request_headers_kb (60) and max_headers_count (100), then 431.
MAX_REQUEST_HEADERS_COUNT = 100
# Slowloris: a request's headers must be complete this long after its first byte (Envoy's
# request_headers_timeout, which Envoy leaves off; 10 s is generous for any real client). A
# connection to an HTTP listener that sends nothing at all is closed after the same time.
REQUEST_HEADERS_TIMEOUT = 10.0
# An HTTP connection with no request in flight is closed after this (Envoy's idle_timeout, 1 h).
HTTP_IDLE_TIMEOUT = 3600.0
# A pooled upstream HTTP connection (to a peer sidecar, or to the local app) with no request in
# flight is closed after this (Envoy's cluster common_http_protocol_options.idle_timeout, 1 h).
UPSTREAM_IDLE_TIMEOUT = 3600.0
# A listener takes at most this many connections at once; more are refused and counted
# (downstream_cx_overflow). Envoy sets no limit; one is needed so that one listener's flood cannot
# take every file descriptor.
MAX_CONNECTIONS_PER_LISTENER = 8192
# New connections are refused (downstream_cx_overload_reject) once the process is within this many
# descriptors of RLIMIT_NOFILE, so that open connections keep the descriptors they need.
FD_RESERVE = 64
# HTTP/2 abuse limits, Envoy's names and defaults (http2_protocol_options):
H2_PREMATURE_RESET_TOTAL_STREAM_COUNT = 500  # rapid reset: judged once this many streams opened
H2_MAX_CONSECUTIVE_EMPTY_FRAMES = 1  # DATA frames with no payload and no END_STREAM in a row
H2_MAX_PRIORITY_FRAMES_PER_STREAM = 100
H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME = 10
# PING and SETTINGS frames a peer may send per second (pysidecar's own; Envoy bounds only the
# acknowledgements it has queued): no real client comes near it, a flood is cut within a second.
H2_MAX_CONTROL_FRAMES_PER_SECOND = 1000
# Bytes queued toward a peer that does not read (acknowledgements, resets, headers; data waits
# for the peer): past this, the connection is closed (Envoy: http2.outbound_flood).
H2_MAX_OUTBOUND_BUFFER = 1024 * 1024
# The header list the mesh hop accepts: the app-facing limit plus room for the per-field overhead
# of HPACK's accounting (32 bytes a field) and the headers the sidecars add.
MESH_HEADER_LIST_FACTOR = 2
# Circuit breaking per cluster (Kuma's defaults), 503 when open.
CB_MAX_CONNECTIONS = 1024
CB_MAX_PENDING_REQUESTS = 1024
CB_MAX_REQUESTS = 1024
CB_MAX_RETRIES = 3
# Passive outlier detection (Envoy's defaults): an endpoint with this many consecutive failures
# (5xx answers, connect failures, resets or timeouts before an answer) is ejected for
# base × the number of its ejections (at most the max), and comes back by itself. At most 10% of
# a cluster's endpoints are ejected, and at least one may be; when every endpoint is ejected the
# cluster uses them all (Envoy's panic mode).
OUTLIER_CONSECUTIVE_5XX = 5
OUTLIER_BASE_EJECTION_TIME = 30.0
OUTLIER_MAX_EJECTION_TIME = 300.0
OUTLIER_MAX_EJECTION_PERCENT = 10
