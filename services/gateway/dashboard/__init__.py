"""The dashboard at /dashboard: server-rendered screens over the same records as the JSON API."""
