"""The paper's evaluation prompt (METHOD.md §4): the question, then one fixed instruction line.

Kept in one place so the harness, the chat app's "ask a benchmark question" path and the training
rewards cannot drift apart; the chat template is applied by the engine, not here.
"""

from __future__ import annotations

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def user_prompt(question: str) -> str:
    """The user message for one problem.

    >>> user_prompt("What is 1+1?")
    'What is 1+1?\\nPlease reason step by step, and put your final answer within \\\\boxed{}.'
    """
    return f"{question}\n{INSTRUCTION}"


def messages_for(question: str) -> list[dict]:
    """Chat messages for one problem: a single user turn, no system prompt (as the paper's code)."""
    return [{"role": "user", "content": user_prompt(question)}]
