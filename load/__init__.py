"""Load harness and benchmark for the background-removal service."""
