"""Fixtures of the server tests: a real `hub serve` on 127.0.0.1 and scoped tokens."""

from tests.hub.server.live import live_server, team_server, tokens

__all__ = ["live_server", "team_server", "tokens"]
