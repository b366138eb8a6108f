"""pysidecar: a traffic-aware sidecar proxy, the data plane of a Kuma-style service mesh."""

__version__ = "0.1.0"
