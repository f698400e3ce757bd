"""ratelimit: Envoy's rate limit service (``ShouldRateLimit``) over Redis.

Requests/min and tokens/min per key and per tenant from descriptors (authz sends the limits as
per-descriptor overrides), plus a static YAML of domains for limits platform teams set in config.
"""
