"""TEST DOUBLE of an Apache Mesos master (v1 scheduler HTTP API). Not Mesos; tests only."""
from .master import FakeMesosMaster, TERMINAL

__all__ = ["FakeMesosMaster", "TERMINAL"]
