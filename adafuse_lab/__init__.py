"""adafuse-lab: adaptive ensemble decoding of LLMs with different tokenizers."""
__version__ = "0.1.0"
