"""Who may do what, and how much: API keys and roles, tenants, quotas, rate limits, weights.

`auth.py` (the `--api-keys` file → a Principal: tenant + role), `tenants.py` (each tenant's
limits and fair-share weight), `quotas.py` (admission and reconciliation, x-ratelimit headers),
`ratelimit.py` / `ratelimit_redis.py` (sliding-window counters, local or shared by replicas),
`errors.py` (refusals carrying their status). Tenancy imports no other layer of deltaserve and
knows no HTTP framework; the entrypoints call it and map its errors.
"""
