"""Traces (§19): one server span per request on the gateway's own server, child spans
for a key lookup that reaches PostgreSQL and for the upstream exchange, exported in
batches over OTLP/HTTP by the OpenTelemetry SDK (`spans`), through a bounded queue
whose drops are counted (`export`).

Imports only the configuration: the store, the forwarder and the edge all use it."""
