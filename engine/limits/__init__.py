"""Rate limits: the limiter (token buckets, all-or-nothing), its typed records, the admin
calls behind `policyctl ratelimit`, and the state stores (`engine.limits.stores`)."""
