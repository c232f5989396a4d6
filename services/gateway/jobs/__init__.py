"""Jobs: submit, status, result, listing, cancel, live events; file projection, job lifecycle."""
