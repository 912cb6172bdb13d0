"""Fault tests: real Valkey, real RQ worker processes, real kills. All marked `slow` (`make test-fast`
leaves them out). Their fixtures are in tests/faults/conftest.py, their helpers in tests/factories.py."""
