"""The web server: HTTP API, the WebSocket fan-out and the page (contract: HTTP API, WebSocket)."""
