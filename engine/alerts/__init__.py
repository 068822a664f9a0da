"""Alerts: the `alert` statements of a policy set, evaluated off the hot path.

`monitor` (the `AlertMonitor`: events in, a `tick(now)` that moves each alert's state,
notifications out), `window` (the sliding windows the signals are computed over),
`webhook` (delivery: a bounded queue and a background thread that POSTs), `records` (the
typed records the engine, the service and the dashboard read). docs/language.md, Alerts.
"""
