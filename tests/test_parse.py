import pytest

from bon.scorers.flip import parse_reconstruction, reconstruction_messages


@pytest.mark.parametrize(
    ("output", "inferred", "status"),
    [
        (
            '{"REASONING": "r", "INFERRED INSTRUCTION": "Define soil degradation."}',
            "Define soil degradation.",
            "json",
        ),
        (
            '```json\n{"reasoning": "r", "inferred_instruction": "Write a poem"}\n```',
            "Write a poem",
            "json",
        ),
        ('{"Inferred-Instruction": "List fruits"}', "List fruits", "json"),
        (
            '<think>long thoughts {"x": 1}</think>{"INFERRED INSTRUCTION": "Sum 2 and 3"}',
            "Sum 2 and 3",
            "json",
        ),
        (
            '{"REASONING": "r", "INFERRED INSTRUCTION": "Write a \\"haiku\\" about',
            'Write a "haiku" about',
            "partial-json",
        ),
        (
            "Reasoning: short.\nInferred Instruction: Write a haiku about rain.",
            "Write a haiku about rain.",
            "labelled",
        ),
        ("The user requested a haiku about rain.", "A haiku about rain.", "fallback"),
        (
            "[Your Inferred Instruction]\nThe user asked me to list three fruits",
            "List three fruits",
            "fallback",
        ),
        ("Paris is the capital.", "Paris is the capital.", "fallback"),
        ("", "", "empty"),
        ("<think>never closed", "", "empty"),
        ("   \n ", "", "empty"),
        # An echoed answer template is no answer, alone or before a real one.
        ('{"REASONING": "...", "INFERRED INSTRUCTION": "..."}', "", "empty"),
        ('{"INFERRED INSTRUCTION": "\u2026"}', "", "empty"),
        (
            'Use {"REASONING": "...", "INFERRED INSTRUCTION": "..."}.\n'
            '{"REASONING": "r", "INFERRED INSTRUCTION": "Name a cat"}',
            "Name a cat",
            "json",
        ),
        # A bare "instruction" key, whole or cut off, leaves no JSON punctuation behind.
        ('{"instruction": "Write a poem about cats"}', "Write a poem about cats", "json"),
        ('{"instruction": "Write a poem about cats"', "Write a poem about cats", "partial-json"),
        ('Instruction: "Write a poem"}', "Write a poem", "labelled"),
        # Reasoning closed by </think> without an opening tag is dropped.
        (
            "Let me think. It is about rain.</think>Write a haiku about rain.",
            "Write a haiku about rain.",
            "fallback",
        ),
        # Echoed prompt markers and the response block before the asked-for header are dropped.
        ("[Response] Write a haiku about the sea.", "Write a haiku about the sea.", "fallback"),
        (
            "[Response]\nWaves crash.\n\n[Your Inferred Instruction]\nWrite a sea haiku.",
            "Write a sea haiku.",
            "fallback",
        ),
    ],
)
def test_parse_reconstruction(output, inferred, status):
    assert parse_reconstruction(output) == (inferred, status)


def test_json_without_instruction_key_falls_back_to_text():
    text, status = parse_reconstruction('{"REASONING": "only reasoning"}')
    assert status == "fallback"
    assert "only reasoning" in text


def test_reconstruction_prompt_shows_only_the_response():
    messages = reconstruction_messages("Paris is the capital of France.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Paris is the capital of France." in messages[1]["content"]
    assert "INFERRED INSTRUCTION" in messages[0]["content"]


def test_reconstruction_prompt_gives_earlier_turns_as_context():
    history = [
        {"role": "user", "content": "I like tea."},
        {"role": "assistant", "content": "Nice."},
    ]
    user = reconstruction_messages("Try green tea.", history)[1]["content"]
    assert user.index("I like tea.") < user.index("Try green tea.")


def test_reasoning_that_mentions_an_instruction_is_not_taken_for_the_key():
    output = '{"REASONING": "The instruction: "unclear", "INFERRED INSTRUCTION": "Sum 2 and 3"}'
    assert parse_reconstruction(output)[0] == "Sum 2 and 3"
