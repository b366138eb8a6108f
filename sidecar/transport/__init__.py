"""Moving bytes between sockets: relays, the TLS transport, connecting and accepting."""

from __future__ import annotations

import contextvars

# The context that long-lived loop callbacks are registered in (a transport's reader and writer,
# shared timers): an empty one. A handle keeps a copy of the context it was made in for its whole
# life, so registered in whoever's context came first, it would keep that opener's values (the
# mesh connector's session to offer, a request's) alive as long as the connection or the timer.
BARE_CONTEXT = contextvars.Context()
