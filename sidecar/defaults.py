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
