"""The pysidecar benchmark harness: what a mesh hop costs, measured against direct.

Run it with `python3 -m bench` (see bench/README.md). Layout: `paths` (the ways from client to
server), `scenarios` (servers, clients and their figures), `tools` (the small clients and servers
we run as processes), `procs` (spawning, measuring and stopping processes), `report` (machine,
versions, Markdown), `cli` (the run).
"""
