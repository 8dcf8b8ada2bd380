"""The relay state machine on scripted token streams: commands, splicing, policies, limits."""

from __future__ import annotations

import numpy as np
import pytest

from edge.events import AnswerFinished, Notice, RelayFinished, RelayStarted, TokenEvent
from edge.relay.commands import count_near_misses
from edge.relay.machine import RelayMachine
from edge.relay.settings import RelaySettings
from tests.fakes import EOS, TOKEN_BYTES, ScriptedSlm, encode, ids_of, run_machine, text_of, view

PROMPT = encode("Q?")


def test_command_split_across_tokens_and_starting_mid_token() -> None:
    # "x.<call" carries two bytes of text before the command; ">" "1" "2" "</call>" finish it.
    slm = ScriptedSlm(ids_of("Hi ", b"x.<call", ">12", b"</call>", "ok"))
    run = run_machine(slm, [(encode("ABC"), "length")])
    assert [c.n for c in run.calls] == [12]
    # The LLM sees the SLM's text with the command deleted; "x." is re-encoded from the boundary token.
    assert text_of(run.calls[0].context) == "Q?Hi x."
    assert run.answer == "Hi x.<call>12</call>ABCok"
    # The LLM's tokens enter the SLM's cache as one chunk, together with the unfed "</call>".
    assert ids_of(b"</call>", "ABC") == slm.fed[len(slm.fed) - 6 : len(slm.fed) - 2]
    assert run.finish is not None and run.finish.reason == "eos"


def test_command_tokens_are_flagged_and_llm_tokens_sourced() -> None:
    run = run_machine(ScriptedSlm(ids_of("a", b"<call>", "3", b"</call>")), [(encode("xyz"), "length")])
    tokens = run.kinds(TokenEvent)
    flagged = [text_of([t.token_id]) for t in tokens if t.in_command]
    assert flagged == ["<call>", "3", "</call>"]
    assert [t.source for t in tokens].count("llm") == 3


def test_whitespace_in_command_and_bytes_after_close_in_same_token() -> None:
    slm = ScriptedSlm(ids_of("a", b"<call>", " 1", b"2</call>\n", "b"))
    run = run_machine(slm, [(encode("L"), "length")])
    assert [c.n for c in run.calls] == [12]
    assert text_of(run.calls[0].context) == "Q?a\n"  # the newline after </call> is kept for the LLM


def test_llm_context_is_append_only_across_relays() -> None:
    script = ids_of("one ", b"<call>", "2", b"</call>", " two ", b"<ca", b"ll>1", b"6</", "call>", " end")
    run = run_machine(ScriptedSlm(script), [(encode("AA"), "length"), (encode("BB"), "length")])
    first, second = run.calls
    assert second.context[: len(first.context) + 2] == first.context + encode("AA")
    assert text_of(second.context) == "Q?one AA two "
    assert [c.n for c in run.calls] == [2, 16]


def test_n_zero_is_no_call_and_is_cut_from_llm_context() -> None:
    script = ids_of("a", b"<call>", "0", b"</call>", "b", b"<call>", "5", b"</call>", "c")
    run = run_machine(ScriptedSlm(script), [(encode("X"), "length")])
    assert [c.n for c in run.calls] == [5]
    assert any(isinstance(e, Notice) and e.kind == "command_n0" for e in run.events)
    assert text_of(run.calls[0].context) == "Q?ab"


@pytest.mark.parametrize(
    ("text", "notice"),
    [
        ("<call>x</call>", "command_malformed"),  # not a number
        ("<call>-3</call>", "command_malformed"),  # negative is not a number either
        ("</call>", "command_malformed"),  # close without open
    ],
)
def test_malformed_commands_do_not_call(text: str, notice: str) -> None:
    run = run_machine(ScriptedSlm(encode(f"a{text}b")))
    assert run.calls == []
    assert [e.kind for e in run.kinds(Notice)] == [notice]
    assert run.answer == f"a{text}b"


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("x = <call>4</call>31 and <call> 12 </call>", 0),
        ("\\(< call>4</call> 3\\)", 1),
        ("<line>5</line><line>4</line>", 2),
        ("<call>4</ call> and <b>7</b>", 2),
        ("if a < 3 and b > 2 then </b>", 0),
    ],
)
def test_command_look_alikes_are_counted(text: str, count: int) -> None:
    assert count_near_misses(text) == count


def test_unterminated_command_is_plain_text() -> None:
    run = run_machine(ScriptedSlm(encode("a<call>12 and more")))
    assert run.calls == [] and run.answer == "a<call>12 and more"


def test_nested_command_uses_the_innermost() -> None:
    run = run_machine(ScriptedSlm(encode("a<call><call>3</call>b")), [(encode("Z"), "length")])
    assert [c.n for c in run.calls] == [3]


def test_huge_n_is_clamped() -> None:
    settings = RelaySettings(max_n=32)
    run = run_machine(ScriptedSlm(encode("a<call>99999999999999999999</call>b")), [([1] * 32, "length")], settings)
    assert run.kinds(RelayStarted)[0].n_granted == 32
    assert run.calls[0].n == 32
    assert "command_clamped" in [e.kind for e in run.kinds(Notice)]


def test_teacher_eos_ends_the_answer() -> None:
    slm = ScriptedSlm(encode("a<call>9</call>never reached"))
    run = run_machine(slm, [(encode("done") + [EOS], "eos")])
    assert run.finish is not None and run.finish.reason == "llm_eos"
    assert run.answer == "a<call>9</call>done"
    assert run.kinds(RelayFinished)[0].tokens_received == 5  # EOS included: it was generated


def test_a_command_past_the_relay_limit_is_a_no_op_then_masked() -> None:
    script = encode("a<call>1</call>b<call>2</call>c<call>3</call>d")
    settings = RelaySettings(max_relays=1, unserved_commands=1)
    run = run_machine(ScriptedSlm(script), [(encode("X"), "length")], settings)
    assert len(run.calls) == 1
    # The second command stays in the SLM's text, unserved; the third could not be written (the
    # mask, once the unserved allowance is spent).
    assert run.answer.startswith("a<call>1</call>Xb<call>2</call>") and run.answer.count("<call>") == 2
    assert [e.detail for e in run.kinds(Notice) if e.kind == "command_unserved"] == [
        "command not served (relay limit 1 reached): the SLM goes on"
    ]


def test_unserved_zero_masks_at_once() -> None:
    script = encode("a<call>1</call>b<call>2</call>c")
    run = run_machine(ScriptedSlm(script), [(encode("X"), "length")], RelaySettings(max_relays=1, unserved_commands=0))
    assert len(run.calls) == 1 and run.answer.count("<call>") == 1


def test_max_new_tokens_counts_both_models() -> None:
    settings = RelaySettings(max_new_tokens=20, max_n=100)
    script = encode("ab<call>50</call>" + "c" * 50)  # the command is 17 tokens: 3 left for the LLM
    run = run_machine(ScriptedSlm(script), [([65] * 3, "length")], settings)
    assert run.calls[0].n == 3
    assert len(run.machine.answer_ids) == 20
    assert run.finish is not None and run.finish.reason == "max_tokens"


def test_slm_alone_stops_at_max_new_tokens() -> None:
    run = run_machine(ScriptedSlm(encode("c" * 50)), settings=RelaySettings(max_new_tokens=7))
    assert run.answer == "c" * 7 and run.finish is not None and run.finish.reason == "max_tokens"


def test_budget_limits_granted_n() -> None:
    settings = RelaySettings(max_new_tokens=20, max_n=100)
    run = run_machine(ScriptedSlm(encode("a<call>50</call>b")), [([66] * 5, "length")], settings)
    granted = run.kinds(RelayStarted)[0].n_granted
    assert granted == 20 - len("a<call>50</call>")


def test_never_policy_is_slm_alone_and_serves_no_command() -> None:
    script = encode("a<call>5</call>b" * 3)
    run = run_machine(ScriptedSlm(script), settings=RelaySettings(policy="never", unserved_commands=2))
    assert run.calls == []
    assert run.answer.count("<call>") == 2  # two no-ops, then masked
    assert set(run.machine.answer_sources) == {"slm"}
    assert "command not served (policy never)" in run.kinds(Notice)[0].detail


def test_cloud_only_hands_the_whole_answer_to_the_llm() -> None:
    settings = RelaySettings(policy="cloud-only", max_new_tokens=64)
    slm = ScriptedSlm(encode("unused"))
    run = run_machine(slm, [(encode("all llm") + [EOS], "eos")], settings)
    assert run.calls[0].context == PROMPT and run.calls[0].n == 64
    assert run.answer == "all llm" and slm.fed == []
    assert set(run.machine.answer_sources) == {"llm"}


def test_cloud_failure_falls_back_to_slm_and_serves_no_more_commands() -> None:
    script = encode("a<call>3</call>b<call>4</call>c<call>5</call>d")
    run = run_machine(ScriptedSlm(script), [], cloud_fails_at=1, settings=RelaySettings(unserved_commands=1))
    assert len(run.calls) == 1
    kinds = [e.kind for e in run.kinds(Notice)]
    assert "cloud_unavailable" in kinds and kinds.count("command_unserved") == 1
    assert run.answer.count("<call>") == 2
    assert run.finish is not None and run.finish.reason == "eos"


def test_cloud_only_failure_restarts_from_prompt_on_slm() -> None:
    slm = ScriptedSlm(encode("ok"))
    run = run_machine(slm, [], RelaySettings(policy="cloud-only"), cloud_fails_at=1)
    assert slm.fed[: len(PROMPT)] == PROMPT and run.answer == "ok"


def test_entropy_policy_calls_on_low_confidence_and_discards_that_sample() -> None:
    slm = ScriptedSlm(encode("abcdef"), uncertain=frozenset({2}))
    settings = RelaySettings(policy="entropy", entropy_tau=0.5, fixed_n=3)
    run = run_machine(slm, [(encode("XYZ"), "length")], settings)
    assert [c.n for c in run.calls] == [3]
    assert text_of(run.calls[0].context) == "Q?ab"
    assert run.answer == "abXYZcdef"
    assert run.kinds(RelayStarted)[0].trigger == "entropy"


@pytest.mark.parametrize("policy", ["entropy", "random"])
def test_failed_controller_relay_continues_from_the_logits_it_had(policy: str) -> None:
    # The relay fails before any LLM token: the SLM goes on as if no relay was tried, without the
    # prompt being fed again into its (already prefilled) cache. run_machine checks continuity.
    slm = ScriptedSlm(encode("abcdef"), uncertain=frozenset({2}))
    settings = RelaySettings(policy=policy, entropy_tau=0.5, random_rate=1.0, fixed_n=3)
    run = run_machine(slm, [], settings, cloud_fails_at=1)
    assert len(run.calls) == 1 and run.answer == "abcdef"
    assert slm.fed == PROMPT + encode("abcdef")
    assert run.finish is not None and run.finish.reason == "eos"


def test_random_policy_is_seeded() -> None:
    settings = RelaySettings(policy="random", random_rate=0.3, fixed_n=1, seed=7)
    replies = [(encode("R"), "length")] * 50
    first = run_machine(ScriptedSlm(encode("abcdefghij")), replies, settings)
    second = run_machine(ScriptedSlm(encode("abcdefghij")), replies, settings)
    assert first.answer == second.answer and 0 < len(first.calls) <= settings.max_relays


def test_cancel_finishes_with_reason() -> None:
    from edge.relay.machine import RelayMachine
    from tests.fakes import view

    machine = RelayMachine(PROMPT, view(), RelaySettings())
    machine.start()
    events, action = machine.cancel()
    assert isinstance(events[-1], AnswerFinished) and events[-1].reason == "cancelled"


def test_a_character_split_at_a_command_boundary_keeps_its_bytes() -> None:
    from edge.relay.commands import cut_commands

    # "é" = c3 a9: its first byte ends one token, its second starts the token that opens the
    # command. The LLM must get "xé" (bytes intact), not "x\ufffd".
    table = [bytes([i]) for i in range(256)] + [b"x\xc3", b"\xa9<call>", b"1</call>", b"!"]
    ids = [256, 257, 258, 259]
    text = b"".join(table[i] for i in ids)
    start = text.index(b"<call>")
    end = text.index(b"</call>") + len(b"</call>")

    def encode(s: str) -> list[int]:
        return list(s.encode())

    out = cut_commands(ids, table, [(start, end)], encode)
    assert b"".join(table[i] for i in out) == "xé!".encode()
    assert "\ufffd".encode() not in b"".join(table[i] for i in out)


def test_commands_of_earlier_turns_are_cut_from_the_llm_context() -> None:
    prompt = encode("Q? A: 3<call>5</call>4 done. Q2?")
    slm = ScriptedSlm(encode("ab"), uncertain=frozenset({1}))
    settings = RelaySettings(policy="entropy", entropy_tau=0.5, fixed_n=2)
    run = run_machine(slm, [(encode("XY"), "length")], settings, prompt=prompt)
    assert text_of(run.calls[0].context) == "Q? A: 34 done. Q2?a"
    assert slm.fed[: len(prompt)] == prompt  # the SLM's own context keeps them


def test_server_cap_clamps_n_and_splits_cloud_only_answers() -> None:
    from edge.relay.machine import RelayMachine
    from tests.fakes import view

    machine = RelayMachine(encode("Q?"), view(), RelaySettings(policy="cloud-only", max_new_tokens=10), cloud_max_n=4)
    _, action = machine.start()
    granted = []
    for reply in (encode("abcd"), encode("efgh"), encode("ij")):
        granted.append(action.n)
        machine.on_llm_tokens(reply)
        _, action = machine.on_cloud_done("length")
    assert granted == [4, 4, 2]
    assert text_of(machine.answer_ids) == "abcdefghij" and action.reason == "max_tokens"
    # A command asking for more than the server allows is granted the server's cap.
    slm = ScriptedSlm(encode("a<call>50</call>b"))
    run = run_machine(slm, [(encode("XYZ"), "length")], RelaySettings(max_n=100))
    assert run.calls[0].n == 50
    capped = RelayMachine(encode("Q?"), view(), RelaySettings(), cloud_max_n=8)
    assert capped._call([], 50, "command")[1].n == 8


def test_server_context_limit_cuts_n_and_then_stops_relaying() -> None:
    prompt = encode("Q?")  # 2 tokens
    settings = RelaySettings(policy="entropy", entropy_tau=0.5, fixed_n=8, max_relays=3)
    slm = ScriptedSlm(encode("abcdef"), uncertain=frozenset({1, 4}))
    from edge.relay.machine import RelayMachine
    from tests.fakes import view

    machine = RelayMachine(prompt, view(), settings, cloud_max_context=8)
    events, action = machine.start()
    fed = []
    calls = []
    while not hasattr(action, "reason"):
        if hasattr(action, "feed"):
            fed += action.feed
            events, action = machine.on_logits(slm.logits(machine.answer_sources.count("slm")))
        else:
            calls.append(action)
            machine.on_llm_tokens(encode("XYZ"[: action.n]))
            events, action = machine.on_cloud_done("length")
    # context 2 + "a" = 3 tokens: N cut to 8 - 1 - 3 = 4 (asked 8). After "aXYZ" + "bcd" the
    # context is 10 > 7: the second relay is not made and the SLM carries on.
    assert [c.n for c in calls] == [4]
    assert fed == prompt + machine.answer_ids
    assert not machine.cloud_usable and "context is full" in machine.cloud_reason


def _first_token(machine: RelayMachine, logits: np.ndarray) -> str:
    events, _ = machine.on_logits(logits)
    return text_of([next(e.token_id for e in events if isinstance(e, TokenEvent))])


def test_call_bias_raises_the_slms_own_command_and_nothing_else() -> None:
    def logits(top: str, runner_up: str) -> np.ndarray:
        out = np.zeros(len(TOKEN_BYTES), dtype=np.float32)
        out[ord(top)], out[ord(runner_up)] = 8.0, 5.0
        return out

    for bias, opener, continuation in ((0.0, "a", "x"), (4.0, "<", "c")):
        machine = RelayMachine(encode("Q?"), view(), RelaySettings(policy="learned", call_bias=bias))
        machine.start()
        assert _first_token(machine, logits("a", "<")) == opener
        assert _first_token(machine, logits("x", "c")) == continuation, "the bias follows `<call` token by token"
    # Inside an open command the SLM writes N itself; under `never` the bias cannot make it call.
    inside = RelayMachine(encode("Q?"), view(), RelaySettings(policy="learned", call_bias=4.0))
    inside.start()
    inside.on_logits(np.eye(len(TOKEN_BYTES), dtype=np.float32)[TOKEN_BYTES.index(b"<call>")] * 9)
    assert _first_token(inside, logits("4", "<")) == "4"
    never = RelayMachine(encode("Q?"), view(), RelaySettings(policy="never", call_bias=20.0))
    never.start()
    assert _first_token(never, logits("a", "<")) == "a"


def test_sampling_survives_extreme_values() -> None:
    from common.sampling import sample

    logits = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, rng, temperature=1e-45) == 1, "a denormal temperature is greedy, not NaN"
    assert sample(logits, rng, temperature=1.0, top_p=0.0) == 1, "top_p 0 keeps the top token"
    assert sample(logits, rng, temperature=1e30) in (0, 1, 2)
