"""Exports: the selection, the export rows and their commands, the exporter's events, the API."""
