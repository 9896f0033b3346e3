"""TEST DOUBLE of an Apache Mesos master (v1 scheduler HTTP API). Not Mesos; tests only."""
from .master import TERMINAL, FakeMesosMaster

__all__ = ["FakeMesosMaster", "TERMINAL"]
