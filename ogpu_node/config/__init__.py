"""Genesis and chain parameters."""

from ogpu_node.config.consensus import ConsensusConfig, GenesisValidator
from ogpu_node.config.genesis import (
    DEV_GENESIS,
    GenesisAccount,
    GenesisConfig,
    GenesisError,
    ProtocolParams,
    load_genesis,
    parse_genesis,
)

__all__ = ["ConsensusConfig", "DEV_GENESIS", "GenesisAccount", "GenesisValidator", "GenesisConfig", "GenesisError", "ProtocolParams", "load_genesis", "parse_genesis"]
