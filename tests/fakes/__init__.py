"""Local fakes of external services, each a real server on loopback that tests start and stop."""
