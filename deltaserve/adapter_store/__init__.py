"""The adapter store: manifests, validation of untrusted adapters, a tenant-scoped registry
with reference-counted leases, and the tiered cache (local content → Redis → origin).

Modules: manifest (the record), paths / safetensors_check / validation (refusing bad input
before anything is registered), content (content-addressed blobs and directories), ingest
(staging + validation in a worker thread), registry (names, leases, atomic replace), tiers
(fetching content through the tiers, single flight), backend / redis_backend (sharing between
replicas, outage handling), sync (converging with the backend), store_config and store (the
façade the server uses); compression / darex / delta_keys (`deltaserve compress`). It imports
only types and rules from deltaserve.engine, never the server.
"""
