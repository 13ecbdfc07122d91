"""Serving a char-transformer (compute/generate.py): deterministic generation, the stream
equivalences `tokens` and `possible`, loading served weights, and the same through a Worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save as st_save

from ogpu_node.compute import (
    InvalidCheckpoint,
    InvalidModelSpec,
    OptimizerSpec,
    Sampling,
    TrainSpec,
    Worker,
    WorkerFailed,
    dataset_from_text,
    load_served_model,
    train_segment,
)
from ogpu_node.compute.generate import MAX_PROMPT_BYTES, MAX_RESPONSE_TOKENS, check, generate, generate_iter
from ogpu_node.compute.serve import SERVED_MODELS

FAMILY = "char-transformer"
HPARAMS = {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32}
PROSE = b"the cat sat on the mat and the dog sat on the log. a bird sang in the tree while the sun rose over the hill. "
CODE = b"def add(x, y):\n    return x + y\n\nfor i in range(10):\n    print(i * 2, add(i, 3))\n"
PROMPT = b"the "
NUCLEUS = Sampling(temperature=1.0, top_p=0.9)
GREEDY = Sampling(temperature=0.0)


def _trained(text: bytes, seed: int = 1, steps: int = 40) -> bytes:
    """A checkpoint of a tiny model trained briefly on `text` (enough to prefer its style)."""
    spec = TrainSpec(FAMILY, HPARAMS, OptimizerSpec("adam", 1e-2), dataset_from_text(text * 10, 32), 16, seed)
    return train_segment(spec, None, steps).checkpoint


@pytest.fixture(scope="module")
def prose_ckpt() -> bytes:
    return _trained(PROSE)


@pytest.fixture(scope="module")
def prose(prose_ckpt):
    return load_served_model(FAMILY, HPARAMS, prose_ckpt)


@pytest.fixture(scope="module")
def code():
    return load_served_model(FAMILY, HPARAMS, _trained(CODE))


def _weights(model) -> bytes:
    return st_save({k: v.contiguous() for k, v in model.state_dict().items()})


# -- Sampling --


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 1.0, "top_k": 0}, "top_k"),
    ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"temperature": 1.0, "margin": -1e-3}, "margin"),
])
def test_sampling_refuses_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=f"sampling.{field}"):
        Sampling(**kwargs)


def test_sampling_round_trips_through_json():
    s = Sampling(0.7, top_k=5, top_p=0.8, margin=0.01)
    assert Sampling.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="sampling"):
        Sampling.from_json({"temperature": 1.0})


def test_importing_generate_does_not_load_torch():
    code = "import sys, ogpu_node.compute.generate; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# -- generation --


def test_the_same_seed_gives_the_same_bytes_and_seeds_differ(prose):
    first = generate(prose, PROMPT, 32, 7, NUCLEUS)
    assert len(first) == 32
    assert generate(prose, PROMPT, 32, 7, NUCLEUS) == first
    assert bytes(generate_iter(prose, PROMPT, 32, 7, NUCLEUS)) == first
    assert generate(prose, PROMPT, 5, 7, NUCLEUS) == first[:5]  # a shorter request is a prefix
    assert len({generate(prose, PROMPT, 32, seed, NUCLEUS) for seed in range(10)}) >= 8


def _argmax_path(model, prompt: bytes, n: int) -> bytes:
    """Greedy decoding written plainly: the whole context cropped to block_size, argmax each step."""
    context = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([context[-HPARAMS["block_size"]:]]))[0, -1]
        context.append(int(torch.argmax(logits)))
    return bytes(context[len(prompt):])


@pytest.mark.parametrize("prompt", [PROMPT, PROSE[:50]], ids=["short", "past-block-size"])
def test_greedy_is_the_argmax_path(prose, prompt):
    assert generate(prose, prompt, 40, 0, GREEDY) == _argmax_path(prose, prompt, 40)
    assert generate(prose, prompt, 40, 123, GREEDY) == generate(prose, prompt, 40, 0, GREEDY)  # no draws


def test_zero_tokens_is_an_empty_response(prose):
    assert generate(prose, PROMPT, 0, 1, NUCLEUS) == b""


@pytest.mark.parametrize(("prompt", "max_tokens", "seed", "match"), [
    (b"", 8, 0, "prompt"),
    (b"x" * (MAX_PROMPT_BYTES + 1), 8, 0, "prompt"),
    (PROMPT, MAX_RESPONSE_TOKENS + 1, 0, "max_tokens"),
    (PROMPT, -1, 0, "max_tokens"),
    (PROMPT, 8, -1, "seed"),
    (PROMPT, 8, 2**64, "seed"),
])
def test_generate_refuses_inputs_out_of_bounds(prose, prompt, max_tokens, seed, match):
    with pytest.raises(ValueError, match=match):
        generate(prose, prompt, max_tokens, seed, NUCLEUS)
    with pytest.raises(ValueError, match=match):
        generate_iter(prose, prompt, max_tokens, seed, NUCLEUS)  # at the call, before any token


# -- the `tokens` check --


def _altered(response: bytes, at: int) -> bytes:
    return response[:at] + bytes([(response[at] + 1) % 256]) + response[at + 1:]


@pytest.mark.parametrize("sampling", [GREEDY, NUCLEUS], ids=["greedy", "sampled"])
def test_tokens_accepts_an_honest_answer_and_rejects_an_altered_one(prose, sampling):
    honest = generate(prose, PROMPT, 32, 5, sampling)
    assert check(prose, PROMPT, honest, 5, sampling, "tokens")
    assert check(prose, PROMPT, honest, 5, sampling, "tokens", max_tokens=32)
    assert not check(prose, PROMPT, _altered(honest, 31), 5, sampling, "tokens")
    assert not check(prose, PROMPT, _altered(honest, 0), 5, sampling, "tokens")
    assert not check(prose, PROMPT, honest[:16], 5, sampling, "tokens", max_tokens=32)  # cut short


# -- the `possible` check --


def test_possible_passes_honest_answers_and_fails_another_models(prose, code):
    """The issue's acceptance test: nucleus sampling (temperature 1, top-p 0.9), 100 seeded 32-token
    answers each. Every honest answer passes; a model trained on other text is caught almost always."""
    honest = sum(check(prose, PROMPT, generate(prose, PROMPT, 32, seed, NUCLEUS), seed, NUCLEUS, "possible")
                 for seed in range(100))
    caught = sum(not check(prose, PROMPT, generate(code, PROMPT, 32, seed, NUCLEUS), seed, NUCLEUS, "possible")
                 for seed in range(100))
    assert honest == 100
    assert caught >= 95


@pytest.mark.parametrize("sampling", [Sampling(0.8, top_k=3), Sampling(1.5, top_k=20, top_p=0.7), GREEDY],
                         ids=["top-k", "top-k-and-p", "greedy"])
def test_possible_passes_honest_answers_past_block_size(prose, sampling):
    """Prompt ‖ response longer than block_size: the check's batched windows see what each step saw."""
    for prompt in (PROMPT, PROSE[:45]):
        for seed in range(5):
            response = generate(prose, prompt, 60, seed, sampling)
            assert check(prose, prompt, response, seed, sampling, "possible"), (prompt, seed)


def _least_likely(model, context: bytes) -> int:
    with torch.no_grad():
        return int(torch.argmin(model(torch.tensor([list(context[-HPARAMS["block_size"]:])]))[0, -1]))


@pytest.mark.parametrize("at", [3, 50], ids=["in-first-window", "in-a-later-window"])
def test_possible_fails_a_token_outside_the_truncated_set(prose, at):
    response = generate(prose, PROMPT, 60, 0, NUCLEUS)
    tampered = response[:at] + bytes([_least_likely(prose, PROMPT + response[:at])]) + response[at + 1:]
    assert not check(prose, PROMPT, tampered, 0, NUCLEUS, "possible")
    assert not check(prose, PROMPT, tampered, 0, Sampling(1.0, top_k=3), "possible")


def test_the_margin_widens_the_set(prose):
    """The second most likely token after the prompt is outside greedy's set, unless the margin covers it."""
    with torch.no_grad():
        logits = prose(torch.tensor([list(PROMPT)]))[0, -1].to(torch.float64)
    top2 = torch.topk(logits, 2)
    gap = float(top2.values[0] - top2.values[1])
    runner_up = bytes([int(top2.indices[1])])
    assert not check(prose, PROMPT, runner_up, 0, Sampling(0.0, margin=gap / 2), "possible")
    assert check(prose, PROMPT, runner_up, 0, Sampling(0.0, margin=gap * 2), "possible")


def test_check_refuses_what_it_cannot_judge(prose):
    with pytest.raises(ValueError, match="top_k or top_p"):
        check(prose, PROMPT, b"ab", 0, Sampling(1.0), "possible")
    with pytest.raises(ValueError, match="kind"):
        check(prose, PROMPT, b"ab", 0, NUCLEUS, "exact")
    with pytest.raises(ValueError, match="response"):
        check(prose, PROMPT, b"a" * (MAX_RESPONSE_TOKENS + 1), 0, NUCLEUS, "possible")
    with pytest.raises(ValueError, match="prompt"):
        check(prose, b"x" * (MAX_PROMPT_BYTES + 1), b"ab", 0, NUCLEUS, "possible")


# -- loading --


def test_a_checkpoint_and_its_weights_serve_the_same_model(prose_ckpt, prose):
    plain = load_served_model(FAMILY, HPARAMS, _weights(prose))
    assert not plain.training and not any(p.requires_grad for p in plain.parameters())
    assert generate(plain, PROMPT, 32, 3, NUCLEUS) == generate(prose, PROMPT, 32, 3, NUCLEUS)
    state = torch.random.get_rng_state()
    load_served_model(FAMILY, HPARAMS, prose_ckpt)
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the global RNG be


def test_bad_weights_are_refused_clearly(prose_ckpt, prose):
    with pytest.raises(InvalidCheckpoint, match="safetensors"):
        load_served_model(FAMILY, HPARAMS, prose_ckpt[: len(prose_ckpt) // 2])
    with pytest.raises(InvalidCheckpoint, match="needs torch.float32"):
        load_served_model(FAMILY, {**HPARAMS, "n_embd": 64}, prose_ckpt)
    with pytest.raises(InvalidCheckpoint, match="blocks.1"):
        load_served_model(FAMILY, {**HPARAMS, "n_layer": 2}, prose_ckpt)
    state = {k: v.clone() for k, v in prose.state_dict().items()}
    state["lm_head.weight"][0, 0] = float("nan")
    with pytest.raises(InvalidCheckpoint, match="NaN"):
        load_served_model(FAMILY, HPARAMS, st_save(state))
    with pytest.raises(InvalidModelSpec, match="does not generate"):
        load_served_model("mlp", {"in_dim": 4, "out_dim": 2}, prose_ckpt)
    with pytest.raises(InvalidModelSpec, match="vocab_size"):
        load_served_model(FAMILY, {**HPARAMS, "vocab_size": 128}, prose_ckpt)


# -- through a worker process --


@pytest.mark.timeout(180)
def test_a_worker_serves_checks_and_survives_bad_input(prose_ckpt, prose, code):
    with Worker(None) as worker:
        worker.load_served("prose", FAMILY, HPARAMS, prose_ckpt)
        worker.load_served("code", FAMILY, HPARAMS, _weights(code))
        pid = worker.pid
        answer = worker.generate("prose", PROMPT, 32, 9, NUCLEUS)
        assert len(answer) == 32 and worker.generate("prose", PROMPT, 32, 9, NUCLEUS) == answer
        pieces: list[tuple[int, bytes]] = []  # tokens as they are decided, for a streaming caller
        assert worker.generate("prose", PROMPT, 32, 9, NUCLEUS, on_tokens=lambda o, t: pieces.append((o, t)),
                               every=5) == answer
        assert [o for o, _ in pieces] == [0, 5, 10, 15, 20, 25] and b"".join(t for _, t in pieces) == answer[:30]

        def broken_preview(offset: int, tokens: bytes) -> None:
            raise RuntimeError("the caller's preview fails")

        assert worker.generate("prose", PROMPT, 32, 9, NUCLEUS, on_tokens=broken_preview) == answer
        assert worker.pid == pid
        assert check(prose, PROMPT, answer, 9, NUCLEUS, "possible")  # the worker's answer, judged here
        assert worker.check("prose", PROMPT, answer, 9, NUCLEUS, "tokens", max_tokens=32)
        assert worker.check("prose", PROMPT, answer, 9, NUCLEUS, "possible")
        assert not worker.check("prose", PROMPT, _altered(answer, 10), 9, NUCLEUS, "tokens")
        assert not worker.check("prose", PROMPT, worker.generate("code", PROMPT, 32, 9, NUCLEUS), 9, NUCLEUS, "tokens")

        with pytest.raises(WorkerFailed, match="InvalidCheckpoint") as failed:
            worker.load_served("broken", FAMILY, HPARAMS, prose_ckpt[:100])
        assert failed.value.error_type == "InvalidCheckpoint"
        with pytest.raises(WorkerFailed, match="n_embd=64") as failed:
            worker.load_served("wrong", FAMILY, {**HPARAMS, "n_embd": 64}, prose_ckpt)
        assert failed.value.error_type == "InvalidCheckpoint"
        with pytest.raises(WorkerFailed, match="prompt") as failed:
            worker.generate("prose", b"x" * (MAX_PROMPT_BYTES + 1), 8, 0, NUCLEUS)
        assert failed.value.error_type == "ValueError"
        with pytest.raises(LookupError, match="broken"):
            worker.generate("broken", PROMPT, 8, 0, NUCLEUS)
        assert worker.pid == pid  # the worker lives on
        assert worker.generate("prose", PROMPT, 32, 9, NUCLEUS) == answer

        os.kill(pid, signal.SIGKILL)  # a dead worker fails one call, then restarts with its models reloaded
        worker._proc.wait()
        with pytest.raises(WorkerFailed, match="died"):
            worker.generate("prose", PROMPT, 32, 9, NUCLEUS)
        assert worker.generate("prose", PROMPT, 32, 9, NUCLEUS) == answer
        assert worker.pid != pid

        for i in range(SERVED_MODELS - 1):  # the oldest loaded ("prose") is evicted
            worker.load_served(f"more-{i}", FAMILY, HPARAMS, _weights(code))
        with pytest.raises(LookupError, match="prose"):
            worker.generate("prose", PROMPT, 8, 0, NUCLEUS)
        assert len(worker.generate("code", PROMPT, 8, 0, NUCLEUS)) == 8
