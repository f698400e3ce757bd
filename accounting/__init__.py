"""accounting: Envoy ext_proc + gRPC access-log service — counts tokens from the final
frame, settles budgets, releases concurrency slots, writes the ledger, audit rows and the
opt-in prompt log."""
