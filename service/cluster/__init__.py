"""The distributed mode, on Redis: the results book (``results``), client sessions and their
outboxes (``relay``), and the job stream with its workers (``jobs``)."""
