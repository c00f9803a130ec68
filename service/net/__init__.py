"""Outbound HTTP: every request the service makes, under one address policy (``outbound``), and
delivery beyond the socket, webhooks and upload endpoints (``delivery``), and a free loopback
port for a server started for a moment (``loopback``)."""
