"""The project's own .proto files (the admin API) and their generated Python modules."""
