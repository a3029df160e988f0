"""The sans-IO protocol core, shared by the daemon and the client.

Framing (:mod:`.wire`), the strict CBOR decoder (:mod:`.cbor`), the method
table (:mod:`.schema`), the error catalogue (:mod:`.errors`), the limits
(:mod:`.limits`) and addresses (:mod:`.address`). Nothing here touches a
socket or an event loop, so all of it is tested in memory.
"""
