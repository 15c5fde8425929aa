"""Local stand-ins for the Bizstim and TimeTap APIs, for integration tests, demos and benchmarks."""

from .faults import Fault
from .server import Simulator

__all__ = ["Fault", "Simulator"]
