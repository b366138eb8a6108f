"""The DNS proxy of transparent proxying: `<service>.mesh` names answered with the outbounds'
addresses (Kuma's VIPs), every other name forwarded to the host's resolvers.

`message` reads and writes DNS messages (sans-I/O), `table` knows the mesh's names and decides each
answer (pure), `server` is the UDP and TCP server and the forwarder on the event loop.
"""
