"""`governance.keyring`: custody keys read when the rules load, never shown, chosen by weight."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from governance.custody import Credential
from governance.errors import PolicyError
from governance.keyring import HeldKey, Keyring, Secret

REAL = "sk-real-0123456789abcdef"


def cred(id: str, provider: str = "openai", **kw: object) -> Credential:
    kw.setdefault("env", f"KEY_{id.upper()}")
    return Credential(id=id, provider=provider, **kw)  # type: ignore[arg-type]


def test_keys_come_from_the_environment_and_files(tmp_path: Path) -> None:
    (tmp_path / "an.key").write_text(f"  {REAL}-an\n")
    ring = Keyring.load(
        [cred("oa"), cred("an", "anthropic", env=None, file=Path("an.key"))],
        tmp_path,
        {"KEY_OA": f"{REAL}-oa\n"},
    )
    assert [(h.id, h.provider, h.secret.reveal()) for h in ring.held] == [
        ("oa", "openai", f"{REAL}-oa"),
        ("an", "anthropic", f"{REAL}-an"),
    ]
    assert ring.providers == {"openai", "anthropic"}


def test_a_key_that_cannot_be_read_makes_the_rules_invalid(tmp_path: Path) -> None:
    (tmp_path / "empty.key").write_text(" \n")
    (tmp_path / "good.key").write_text(REAL)
    creds = [
        cred("unset"),
        cred("blank"),
        cred("missing", env=None, file=tmp_path / "nope.key"),
        cred("empty", env=None, file=Path("empty.key")),
        cred("dir", env=None, file=tmp_path),
        cred("good", env=None, file=Path("good.key")),
    ]
    with pytest.raises(PolicyError) as e:
        Keyring.load(creds, tmp_path, {"KEY_BLANK": "  ", "UNRELATED": REAL})
    text = str(e.value)
    assert "credential 'unset': the environment variable KEY_UNSET is not set" in text
    assert "credential 'blank': the environment variable KEY_BLANK is empty" in text
    assert f"credential 'missing': cannot read the key file {tmp_path / 'nope.key'}" in text
    assert f"credential 'empty': the key file {tmp_path / 'empty.key'} is empty" in text
    assert "credential 'dir': cannot read the key file" in text
    assert "'good'" not in text and REAL not in text


def test_a_secret_is_never_shown() -> None:
    s = Secret(REAL)
    held = HeldKey(cred("oa"), s)
    ring = Keyring([held])
    for shown in (repr(s), str(s), f"{s}", repr(held), str(held), repr(ring.held), f"{held!r}"):
        assert REAL not in shown
    assert "redacted" in repr(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert s == Secret(REAL) and s != Secret("other")


def test_candidates_are_the_providers_keys_for_the_model_that_the_key_may_use() -> None:
    ring = Keyring(
        [
            HeldKey(cred("a"), Secret("1")),
            HeldKey(cred("b", models=["gpt-4o*"]), Secret("2")),
            HeldKey(cred("c", "anthropic"), Secret("3")),
        ]
    )
    ids = lambda *args: [h.id for h in ring.candidates(*args)]  # noqa: E731
    assert ids("openai", "gpt-4o", None) == ["a", "b"]
    assert ids("openai", "gpt-4o-2024-08-06", None) == ["a", "b"]
    assert ids("openai", "o3", None) == ["a"]
    assert ids("openai", None, None) == ["a", "b"]  # a request naming no model (a list)
    assert ids("openai", "gpt-4o", ["b", "c"]) == ["b"]
    assert ids("openai", "o3", ["b"]) == []
    assert ids("anthropic", "claude-sonnet-4-5", None) == ["c"]
    assert ids("google", "gemini", None) == []
    assert ring.choose("openai", "o3", ["b"]) is None


def test_the_choice_follows_the_injected_randomness() -> None:
    draws = iter([0.0, 0.24, 0.25, 0.99])
    ring = Keyring(
        [
            HeldKey(cred("a", weight=Decimal(1)), Secret("1")),
            HeldKey(cred("b", weight=Decimal(3)), Secret("2")),
        ],
        rand=lambda: next(draws),
    )
    assert [ring.choose("openai", "gpt-4o", None).id for _ in range(4)] == ["a", "a", "b", "b"]  # type: ignore[union-attr]


def test_keys_are_chosen_in_proportion_to_their_weights() -> None:
    weights = {"a": Decimal(1), "b": Decimal("2.5"), "c": Decimal("0.5")}
    rng = random.Random(15)
    ring = Keyring(
        [HeldKey(cred(i, weight=w), Secret(i)) for i, w in weights.items()],
        rand=rng.random,
    )
    n = 40_000
    seen = Counter(ring.choose("openai", "gpt-4o", None).id for _ in range(n))  # type: ignore[union-attr]
    total = sum(weights.values())
    # Chi-square with 2 degrees of freedom: 13.8 is its 0.1% tail; a wrong weighting (say uniform)
    # gives thousands.
    chi2 = sum((seen[i] - n * float(w / total)) ** 2 / (n * float(w / total)) for i, w in weights.items())
    assert chi2 < 13.8, seen
    uniform = sum((seen[i] - n / 3) ** 2 / (n / 3) for i in weights)
    assert uniform > 1000
