"""Chat-message helpers shared by every engine."""

from __future__ import annotations

Message = dict[str, str]


def merge_system(messages: list[Message]) -> list[Message]:
    """Fold a leading system message into the first user turn.

    For chat templates without a system role (Gemma, Mistral): the system text is placed
    before the user's text, separated by a blank line.
    """
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    for i, message in enumerate(rest):
        if message["role"] == "user":
            rest[i] = {**message, "content": f"{system}\n\n{message['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]
