"""Web tier: Falcon ASGI app."""
