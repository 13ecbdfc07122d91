"""Protocol data types and their codecs (signed messages arrive with consensus and the contracts)."""
