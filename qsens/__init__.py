"""qsens: a quantization-sensitivity benchmark."""

__version__ = "0.1.0"
