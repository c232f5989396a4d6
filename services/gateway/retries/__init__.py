"""Owners retry their own failed work in bulk: a job's failed files, their failed or dead tasks."""
