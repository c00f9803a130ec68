"""Turn-taking and micro-batching: the fair CPU pool (``fairness``) and the batcher that feeds
the model (``batcher``)."""
