"""`task status`'s output as a script reads it: `Name:  value` lines in plain text (no colour, no wrap,
no trailing spaces), with the bids, checkpoints and loss chart under their fields."""

from __future__ import annotations

import re

from eth_utils import to_checksum_address

from ogpu_node.apps.client import CheckpointStatus, LossPoint, TaskStatus, build_history
from ogpu_node.cli.common import plain_text
from ogpu_node.cli.task_view import status_view

A = to_checksum_address("0x" + "aa" * 20)
B = to_checksum_address("0x" + "bb" * 20)


def field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(.*)$", text, re.M)
    assert match, text
    return match.group(1)


def status(**changes) -> TaskStatus:
    values = dict(task_id=7, client=A, kind=0, state="Running", prescription_hash=b"\x01" * 32, escrow=1000,
                  deposit=100, executor=B, price=900, bid_deadline=0, assigned_at=1_700_000_000, checkpoints=3,
                  bids=((A, 900), (B, 950)), accepted=1, committed=2, paid=300, confirm_deadline=0,
                  checkpoint=CheckpointStatus(2, "Reveal", 1, 1_700_000_100, (A, B)), state_code=2)
    return TaskStatus(**{**values, **changes})


def test_fields_parse_as_name_value_lines():
    history = build_history(7, 3, [
        ("TaskAssigned", {"executor": B, "price": 900}, 3),
        ("CheckpointRevealed", {"k": 1, "checkpointHash": b"\x05" * 32}, 5),
        ("CheckpointAccepted", {"k": 1, "executorPaid": 270, "councilPaid": 30, "discount": 0}, 6),
    ])
    text = plain_text(status_view(status(), history, [LossPoint(1, 10, 0.5, True)]))
    assert all(line == line.rstrip() for line in text.splitlines())
    assert field(text, "Task") == "7" and field(text, "State") == "Running"
    assert field(text, "Client") == A and field(text, "Executor") == B
    assert field(text, "Escrow") == "1000 wei (1e-15 oGPU)" and field(text, "Deposit").startswith("100 wei")
    assert field(text, "Prescription") == "0x" + "01" * 32
    assert field(text, "Bid deadline") == "-"
    assert field(text, "Assigned at") == "2023-11-14 22:13:20 UTC (1700000000)"
    assert field(text, "Bids") == "2"
    assert re.search(rf"^\s+{A}\s+900 wei \(9e-16 oGPU\)$", text, re.M)
    assert field(text, "Progress") == "1/3 checkpoints accepted, 2 committed"
    assert field(text, "Checkpoint 2") == "phase Reveal, round 1, phase ends 2023-11-14 22:15:00 UTC (1700000100)"
    assert re.search(rf"^\s+council: {A}, {B}$", text, re.M)
    assert text.count(" accepted (executor ") == 1
    assert "pending: 2, 3" in text
    assert field(text, "Payments").startswith("300 wei")
    assert field(text, "Loss") == "mean of the recent training losses in each checkpoint"
    assert "(checkpoint; * accepted, o revealed)" in text and "no loss data" not in text


def test_no_bids_no_executor_no_loss():
    text = plain_text(status_view(status(bids=(), executor=None, checkpoint=None, state="Bidding"), None, []))
    assert field(text, "Bids") == "0" and field(text, "Executor") == "-" and field(text, "State") == "Bidding"
    assert "Loss" not in text and "Checkpoint" not in text
