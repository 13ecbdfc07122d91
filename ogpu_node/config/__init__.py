"""Genesis and chain parameters."""

from ogpu_node.config.genesis import GenesisAccount, GenesisConfig, GenesisError, load_genesis, parse_genesis

__all__ = ["GenesisAccount", "GenesisConfig", "GenesisError", "load_genesis", "parse_genesis"]
