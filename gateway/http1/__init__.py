"""The HTTP/1.1 wire, for both sides of the gateway: the sans-IO request reader
(`reader`, with its body framing in `framing`), the flow-controlled body queue
(`bodyqueue`), header encoding, hop-by-hop rules, chunk framing and the `Date`
header (`wire`), and the gateway's own answers (`messages`).

Nothing here touches a socket or knows about policies, keys or upstreams.
Imports nothing else of the gateway: every other package may import it."""
