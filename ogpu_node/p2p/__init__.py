"""The peer-to-peer network (docs/network.md): py-libp2p over trio, Noise only, gossip and requests."""
