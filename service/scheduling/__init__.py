"""Turn-taking and micro-batching: the fair CPU pool (``fairness``) and the batcher that feeds
the model (``batcher``); the memory they work in: the working-memory budget (``budget``) and
the C allocator's tuning (``allocator``)."""
