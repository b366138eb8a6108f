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
RELAY_LOW_WATER = 64 * 1024

# HTTP.
OUTBOUND_REQUEST_TIMEOUT = 15.0  # bounds the wait for the response head; 0 disables
INBOUND_REQUEST_TIMEOUT = 0.0  # Kuma: none on the inbound
OUTBOUND_STREAM_IDLE_TIMEOUT = 1800.0
INBOUND_STREAM_IDLE_TIMEOUT = 3600.0
HTTP_CONNECT_ATTEMPTS = 5  # connect failures are retried on the next endpoint
MAX_REQUEST_HEADERS_BYTES = 60 * 1024  # Envoy: 60 KiB, then 431
# HTTP/2 between sidecars carries many app connections: room for Kuma's 1024 requests per
# cluster on one connection. Toward apps, Envoy-like 100.
MESH_MAX_CONCURRENT_STREAMS = 1024
APP_MAX_CONCURRENT_STREAMS = 100
H2_STREAM_WINDOW = 1024 * 1024
H2_CONNECTION_WINDOW = 16 * 1024 * 1024
H2_MAX_FRAME_SIZE = 256 * 1024
BODY_HIGH_WATER = 256 * 1024  # bytes of one body the sidecar holds before pausing its source
PROTOCOL_DETECTION_TIMEOUT = 0.1  # sniffing: wait this long for the app's first bytes; 0 = off
# The header that tells a peer's inbound that this request was HTTP/1.x at the app (linkerd's
# l5d-orig-proto); the inbound strips it and speaks HTTP/1.1 to its app.
ORIG_PROTO_HEADER = b"x-pysidecar-orig-proto"

# Mesh mTLS (sidecar.identity.mesh).
MTLS_HANDSHAKE_TIMEOUT = 10.0  # inbound: from accept to a verified peer (Kuma's inbound connect)
# Permissive mode tells TLS from plaintext by the first byte; a client silent this long is
# plaintext (a server that speaks first).
PERMISSIVE_DETECTION_TIMEOUT = 0.5
# TLS 1.3 outbound: a peer refuses our certificate only after our handshake is done. Wait this
# long at most for its verdict (a session ticket, data, or an alert) before using the connection.
MTLS_PEER_VERDICT_WAIT = 0.1
