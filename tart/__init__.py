"""tart: JAM telemetry backend."""

__version__ = "0.1.0"
