"""The OpenGPU VM: py-evm's Prague VM with this chain's differences, as a small subclass."""

from __future__ import annotations

from eth.abc import BlockAPI
from eth.vm.forks.prague import PragueVM
from eth.vm.forks.prague.constants import DEPOSIT_REQUEST_TYPE

from ogpu_node.execution.native import SystemLog, run_block_start


class OgpuVM(PragueVM):
    fork = "ogpu-prague"
    system_logs: list[SystemLog] = []
    settlement: tuple[tuple[bytes, int], ...] = ()  # set by Execution.execute before preprocessing

    def block_preprocessing(self, block: BlockAPI) -> None:
        super().block_preprocessing(block)
        # The protocol's start-of-block system call: the epoch's settlement and validator queues, then
        # the native contracts' due deadlines.
        self.system_logs = run_block_start(self.state, self.settlement)

    def process_deposit_request_data(self, block: BlockAPI) -> None:
        # Validators deposit through the native Stake contract, not an EIP-6110 deposit contract, so
        # the deposit request list is always empty; PragueVM would re-read every receipt from a trie
        # we do not store to find that out.
        block.block_requests.append(DEPOSIT_REQUEST_TYPE)
