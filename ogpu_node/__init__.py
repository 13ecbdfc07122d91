"""ogpu-node: a full node for the OpenGPU Network."""

__version__ = "0.1.0"
CLIENT_VERSION = f"ogpu-node/v{__version__}/python3.11"
