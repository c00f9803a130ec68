"""The service's one port: HTTP routing and process life (``http``), WebSocket connections
(``websocket``), the REST twin (``rest``), and what they share (``context``)."""
