"""reconciler: declarative, exactly-once submission of JD Cloud Live clip-recording tasks."""

__version__ = "0.1.0"
