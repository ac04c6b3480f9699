"""The tokenwire Python client (see clients/python/README.md)."""
