"""Genesis and chain parameters."""

from ogpu_node.config.genesis import (
    GenesisAccount,
    GenesisConfig,
    GenesisError,
    ProtocolParams,
    load_genesis,
    parse_genesis,
)

__all__ = ["GenesisAccount", "GenesisConfig", "GenesisError", "ProtocolParams", "load_genesis", "parse_genesis"]
