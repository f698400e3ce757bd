"""authz: Envoy ext_authz service — who may call which endpoint and model, and the admin API."""
