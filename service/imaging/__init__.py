"""Images: the accepted formats (``formats``, light) and the pure pipeline (``pipeline``)."""
