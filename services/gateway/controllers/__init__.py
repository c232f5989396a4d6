"""One Litestar controller per resource of the HTTP API."""
