"""Code shared by the gateway's services: settings, storage handles, key and period
arithmetic, logging, metrics and gRPC server plumbing. A service's rules live in the service."""
