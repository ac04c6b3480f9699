"""The browser side of tokenwire, shipped as package data (``tokenwire.web``).

``tokenwire.js`` (with ``tokenwire.d.ts`` and ``package.json``) is the
dependency-free ES module client, publishable to npm as it is; ``page/`` is
the chat page that ``tokenwire serve`` serves at ``GET /``.
"""
