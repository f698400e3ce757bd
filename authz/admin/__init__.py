"""The admin gRPC API (``neuronetz.admin.v1.AdminService``), served by the authz process on
``admin_listen`` beside the ext_authz service: tenants, keys, budgets, model policy, usage and
backend probes for operators with grpcurl or the CLI."""
