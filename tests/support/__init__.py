"""Test helpers that start real external programs (redis-server), never mocks of them."""
