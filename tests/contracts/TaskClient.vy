# pragma version 0.4.3
"""A client contract for Task (the native contract at 0x…1001, contracts/Task.json): it declares Task's
Terms struct and interface itself and submits a batch task with value through `extcall`, keeping the
task id Task returns."""

struct Terms:
    maxPayment: uint256
    councilSize: uint16
    councilShareBps: uint16
    checkpoints: uint16
    segmentWindow: uint64
    bidWindow: uint64
    firstN: uint16
    minBids: uint16
    latenessBpsPerSecond: uint32
    confirmWindow: uint64
    responseMethod: uint8
    responseWeight: uint16
    equivalence: uint8
    minMemoryMiB: uint64
    deviceMask: uint8
    numericProfile: bytes32

interface ITask:
    def submitTask(prescriptionHash: bytes32, kind: uint8, terms: Terms) -> uint256: payable
    def taskCount() -> uint256: view

TASK: constant(address) = 0x0000000000000000000000000000000000001001

last_task_id: public(uint256)
submitted: public(uint256)

event Submitted:
    taskId: indexed(uint256)
    value: uint256


@external
@payable
def submit(prescription_hash: bytes32, terms: Terms) -> uint256:
    task_id: uint256 = extcall ITask(TASK).submitTask(prescription_hash, 0, terms, value=msg.value)
    self.last_task_id = task_id
    self.submitted += 1
    log Submitted(taskId=task_id, value=msg.value)
    return task_id


@view
@external
def task_count() -> uint256:
    return staticcall ITask(TASK).taskCount()
