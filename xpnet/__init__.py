"""xpnet: dense networks trained by hand-written backpropagation on any array-API library."""

__version__ = "0.1.0"
