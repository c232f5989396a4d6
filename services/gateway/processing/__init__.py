"""Processing in the saga: what a download queues, the processor's events, composites."""
