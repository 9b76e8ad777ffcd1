"""The provider keys spendfuse holds (key custody), read when the rules load. Pure: the
environment and the file system are passed in.

Every credential of the rules (`governance.custody.Credential`) is read from its environment
variable or file when the rules load. A missing variable, or a file that cannot be read or is
empty, makes the rules invalid (`PolicyError`, naming the credential and where it was looked
for, never a value): a misconfigured proxy does not start, and a reload keeps the old rules.

A key's value is held in a `Secret`, whose `repr` and `str` are redacted, so a log line, a
traceback's locals or an f-string never shows it; only `reveal()` does, where the key is sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from governance.custody import Credential
from governance.errors import PolicyError
from governance.hosts import canonical_host
from governance.matching import glob_match


class Secret:
    """A provider key's value. Shown as `<redacted>` everywhere but `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only where it is put on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> object:  # never pickled (a saved flow, a copied state)
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class HeldKey:
    """A credential and the key it read."""

    credential: Credential
    secret: Secret

    @property
    def id(self) -> str:
        return self.credential.id

    @property
    def provider(self) -> str:
        return self.credential.provider

    def sent_to(self, host: str | None, *, named_only: bool) -> bool:
        """Whether it may be sent to `host` (canonical; None: no host to check): one its
        credential names, or any when it names none and `named_only` is False."""
        hosts = self.credential.hosts
        if hosts is None:
            return not named_only
        return host is not None and host in {canonical_host(h) for h in hosts}

    def serves(self, model: str | None) -> bool:
        """Whether it serves `model` (None: a request that names no model, such as a list)."""
        models = self.credential.models
        return models is None or model is None or any(glob_match(m, model) for m in models)


def _read(credential: Credential, base: Path, environ: Mapping[str, str]) -> str | PolicyError:
    """The credential's key, or the problem (naming where it was looked for, never a value)."""
    where = f"credential '{credential.id}'"
    if credential.env is not None:
        value = environ.get(credential.env)
        if value is None:
            return PolicyError(f"{where}: the environment variable {credential.env} is not set")
        if not value.strip():
            return PolicyError(f"{where}: the environment variable {credential.env} is empty")
        return value.strip()
    assert credential.file is not None
    path = credential.file if credential.file.is_absolute() else base / credential.file
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return PolicyError(f"{where}: cannot read the key file {path}: {type(e).__name__}")
    if not value:
        return PolicyError(f"{where}: the key file {path} is empty")
    return value


class Keyring:
    """The keys read for the rules' credentials, and the weighted choice among them."""

    def __init__(self, held: Sequence[HeldKey] = (), *, rand: Callable[[], float] = random.random) -> None:
        self.held = tuple(held)
        self._rand = rand  # injected: tests choose deterministically
        self.providers = frozenset(h.provider for h in self.held)

    @classmethod
    def load(
        cls,
        credentials: Iterable[Credential],
        base: Path,
        environ: Mapping[str, str],
        *,
        rand: Callable[[], float] = random.random,
    ) -> Keyring:
        """Read every credential's key. Raises `PolicyError` listing every one that failed."""
        held: list[HeldKey] = []
        problems: list[str] = []
        for credential in credentials:
            value = _read(credential, base, environ)
            if isinstance(value, PolicyError):
                problems.append(str(value))
            else:
                held.append(HeldKey(credential, Secret(value)))
        if problems:
            raise PolicyError("key custody: " + "; ".join(problems))
        return cls(held, rand=rand)

    def __bool__(self) -> bool:
        return bool(self.held)

    def candidates(self, provider: str, model: str | None, allowed: Sequence[str] | None) -> list[HeldKey]:
        """The keys that may serve a request for `model` to `provider`, by a key allowed
        `allowed` (credential ids; None: any of the provider)."""
        return [
            h
            for h in self.held
            if h.provider == provider and h.serves(model) and (allowed is None or h.id in allowed)
        ]

    def choose(
        self,
        provider: str,
        model: str | None,
        allowed: Sequence[str] | None,
        host: str | None = None,
        *,
        named_only: bool = False,
    ) -> HeldKey | None:
        """One of `candidates` that may be sent to `host` (see `HeldKey.sent_to`), each with
        probability weight / sum of their weights; None when none may serve the request."""
        found = [
            h for h in self.candidates(provider, model, allowed) if h.sent_to(host, named_only=named_only)
        ]
        if len(found) <= 1:
            return found[0] if found else None
        total = sum((h.credential.weight for h in found), Decimal(0))
        point = Decimal(repr(self._rand())) * total
        for h in found:
            point -= h.credential.weight
            if point < 0:
                return h
        return found[-1]  # the rounding edge: rand() is below 1, so only at the last
