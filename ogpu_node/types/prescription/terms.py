"""What a prescription means on chain: the terms Task enforces, the checks only the chain can answer,
the trainer's seed, and the steps of each checkpoint's segment."""

from __future__ import annotations

from eth_hash.auto import keccak  # ogpu_node.crypto is a sibling layer: types may not import it

from ogpu_node.types.prescription.schema import InvalidPrescription, Prescription
from ogpu_node.types.protocol import NO_PROFILE, Equivalence, ResponseMethod, profile_id
from ogpu_node.types.records import TermsRecord, as_tuple


def terms_record(p: Prescription) -> TermsRecord:
    """Task.submitTask's Terms (what Task.getTerms returns) of a batch prescription."""
    if p.kind != "batch" or p.H is None:
        raise InvalidPrescription("prescription.kind", "Task.submitTask takes a batch task; use to_stream_terms")
    i = p.I
    assert i.checkpoints is not None and i.segment_window_s is not None and i.confirm_window_s is not None
    return TermsRecord(
        max_payment=i.max_payment,
        council_size=i.council_size,
        council_share_bps=p.f.council_share_bps,
        checkpoints=i.checkpoints,
        segment_window=i.segment_window_s,
        bid_window=p.H.bid_window_s,
        first_n=p.H.first_n or 0,
        min_bids=p.H.min_bids,
        lateness_bps_per_second=p.f.lateness_bps_per_second,
        confirm_window=i.confirm_window_s,
        response_method=0,  # response method and weight: stream terms
        response_weight=0,
        equivalence=int(Equivalence.EXACT if p.e.kind == "exact" else Equivalence.ALLCLOSE),
        min_memory_mib=i.hardware.min_memory_mib,
        device_mask=i.hardware.device_mask,
        numeric_profile=numeric_profile(p),
    )


def numeric_profile(p: Prescription) -> bytes:
    """The terms' numericProfile: the id of `I.numeric_profile`, or zero (any provider) if it names none."""
    name = p.I.numeric_profile
    return NO_PROFILE if name is None else profile_id(name)


def to_terms(p: Prescription) -> tuple[int | bytes, ...]:
    """`terms_record(p)` as the ABI tuple Task.submitTask takes, in TermsRecord's field order."""
    return as_tuple(terms_record(p))


def to_stream_terms(p: Prescription) -> tuple[int | bytes, ...]:
    """Task.submitStream's StreamTerms, in order: budget, councilSize, pricePerUnit, responseMethod,
    responseWeight, maxResponseTime (ms), settleWindow, minMemoryMiB, deviceMask, numericProfile."""
    if p.kind != "stream":
        raise InvalidPrescription("prescription.kind", "Task.submitStream takes a stream task; use to_terms")
    i = p.I
    assert i.response_method is not None and i.price_per_unit is not None
    assert i.max_response_ms is not None and i.settle_window_s is not None
    return (
        i.max_payment, i.council_size, i.price_per_unit, int(ResponseMethod[i.response_method.upper()]),
        i.response_weight or 0, i.max_response_ms, i.settle_window_s, i.hardware.min_memory_mib,
        i.hardware.device_mask, numeric_profile(p),
    )


def check_against_chain(p: Prescription, qualifying_providers: int, escrow_wei: int) -> None:
    """What only the chain knows, checked by the client app before it submits: enough providers whose
    registered resources meet the terms to seat the council, and escrow to cover max_payment."""
    if p.I.council_size > qualifying_providers:
        raise InvalidPrescription(
            "prescription.I.council_size",
            f"{p.I.council_size} exceeds the {qualifying_providers} providers whose resources qualify",
        )
    if p.I.max_payment > escrow_wei:
        raise InvalidPrescription(
            "prescription.I.max_payment", f"{p.I.max_payment} wei exceeds the escrow of {escrow_wei} wei"
        )


def training_seed(p: Prescription, assignment_seed: bytes) -> int:
    """The trainer's seed: the chain's assignment seed (fixed when bidding closed, so nobody could
    train ahead or reuse another task's weights) mixed with the client's optional `I.seed`."""
    return int.from_bytes(keccak(assignment_seed + (p.I.seed or 0).to_bytes(8, "big")), "big")


# --- segments ------------------------------------------------------------------------------------


def segment_bounds(p: Prescription, k: int) -> tuple[int, int]:
    """Global steps (first, last) of segment k: checkpoint k is the state after step ⌊steps·k/K⌋."""
    steps, checkpoints = p.I.steps, p.I.checkpoints
    assert steps is not None and checkpoints is not None, "a batch prescription"
    if not 1 <= k <= checkpoints:
        raise ValueError(f"checkpoint {k} is outside 1..{checkpoints}")
    return steps * (k - 1) // checkpoints, steps * k // checkpoints


def drawn_step(p: Prescription, k: int, step_index: int) -> int:
    """The step inside segment k whose state hash council members commit under `exact`, from the
    council's `stepIndex`: one of first+1 … last (the start state is public, the end is the result)."""
    first, last = segment_bounds(p, k)
    return first + 1 + step_index % (last - first)
