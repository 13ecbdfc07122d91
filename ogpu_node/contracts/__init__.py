"""Native protocol contracts (Stake, Task, Bid, Slashing) in plain Python over a host interface."""
