"""User-defined tasks: enqueue, status, list, cancel, task types, projection, reconciler kind."""
