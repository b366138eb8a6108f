"""Transparent proxying, as Kuma's: the app's TCP is redirected to the sidecar by iptables.

- `redirect`: the redirect listeners, which hand each connection to the listener planned for its
  original destination, or pass it through to that destination (`sidecar.plan` says which
  listeners there are and which of them bind sockets of their own).
- `iptables`: `pysidecar transparent-proxy`, the rules that do the redirecting (kumactl's
  `install transparent-proxy`).
"""
