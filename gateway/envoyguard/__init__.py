"""The Envoy config guard (issue 18): refuses an Envoy config that switches the gateway's
protection off. ``check.check_files`` checks files; ``command`` is ``neuronetz-gateway envoy
check``; ``violations.INVARIANTS`` lists the rules (docs/PLATFORM.md, "Edit, check, roll out").
Parses a config into Envoy's typed messages and runs ``envoy --mode validate`` when Envoy is at
hand."""
