"""FLIP on the real packaged SmolLM2-135M: true answers beat off-topic ones (under a minute)."""

from __future__ import annotations

import pytest

import bon

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg

# Written by this team: each instruction, a true answer, and an answer to something else.
CASES = [
    (
        "What is the capital of France?",
        "The capital of France is Paris, which lies on the river Seine.",
        "To bake bread, mix flour, water, yeast and salt, knead, let it rise, then bake it.",
    ),
    (
        "Give me three tips for sleeping better.",
        "1. Go to bed at the same time every night. 2. Avoid screens before bed. "
        "3. Keep your bedroom cool and dark.",
        "Photosynthesis is how plants use sunlight, water and carbon dioxide to make sugar.",
    ),
    (
        "Write a haiku about the ocean.",
        "Waves fold into foam,\nthe ocean breathes salt and light,\nblue without an end.",
        "The French Revolution began in 1789 and ended the absolute monarchy in France.",
    ),
    (
        "How do I reverse a list in Python?",
        "Use my_list.reverse() to reverse a Python list in place, or my_list[::-1] for a copy.",
        "A healthy breakfast could be oatmeal with fruit, yogurt, and a glass of orange juice.",
    ),
    (
        "Explain what a black hole is.",
        "A black hole is a region of space where gravity is so strong that nothing, not even "
        "light, can escape it. It forms when a massive star collapses.",
        "Tennis is played by two or four players who hit a ball over a net with rackets.",
    ),
]


def test_flip_ranks_true_answers_above_off_topic_ones(smollm2_path, tmp_path):
    records = [{"prompt": x, "responses": [good, bad]} for x, good, bad in CASES]
    out = bon.score_records(
        records,
        scorers=["flip", "flip-likelihood", "flip-tokens"],
        similarity="cosine",
        prompt="short",
        max_new_tokens=32,
        no_cache=True,
    )
    # Generative flip decodes greedily in bf16 batches, where padding can flip a near-tie in
    # the decoded text; the teacher-forced scorers read fixed text and must win every case.
    required = {"flip": len(CASES) - 1, "flip-likelihood": len(CASES), "flip-tokens": len(CASES)}
    for name, needed in required.items():
        wins = [
            r["candidates"][0]["scores"][name] > r["candidates"][1]["scores"][name] for r in out
        ]
        assert sum(wins) >= needed, (name, wins)


def test_echo_guard_stops_a_restated_instruction_from_winning(smollm2_path):
    records = [
        {"prompt": x, "responses": [good, f"You asked: {x} Good question, let me think.", x]}
        for x, good, _ in CASES[:3]
    ]
    options = {"prompt": "short", "similarity": "cosine", "max_new_tokens": 32, "no_cache": True}
    plain = bon.score_records(records, scorers=["flip-likelihood"], echo_guard=False, **options)
    names = ["flip", "flip-likelihood", "flip-tokens"]
    guarded = bon.score_records(records, scorers=names, **options)
    # Unguarded, the echo reconstructs its instruction trivially and beats the true answer.
    assert all(
        r["candidates"][1]["scores"]["flip-likelihood"]
        > r["candidates"][0]["scores"]["flip-likelihood"]
        for r in plain
    )
    for record in guarded:
        good, echo, bare = record["candidates"]
        for name in names:
            # A restated question is cut out and the rest scored, less the penalty.
            assert echo[name]["echo_penalised"] is True
            assert bare[name]["echo_penalised"] is True
            assert good["scores"][name] > echo["scores"][name], name
            assert good["scores"][name] > bare["scores"][name], name
