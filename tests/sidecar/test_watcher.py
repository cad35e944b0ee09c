"""The manifest watcher's poll on the event loop (``apoll``): the same answers as the threaded
``poll``, and only a new version is validated."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.errors import BackendUnavailable
from broker.scopes.loader import manifest_from_text
from broker.sidecar.watcher import ManifestWatcher, Refusal, Switch
from broker.vault.manifests import PublishedManifest

TEXT = """\
agent: watched-agent
policy_version: {version}
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
"""


def published(version: int, *, content_hash: str | None = None) -> PublishedManifest:
    text = TEXT.format(version=f"v{version}")
    real = manifest_from_text(text, "test").content_hash
    return PublishedManifest(
        "watched-agent", version, text, content_hash or real, f"v{version}", "editor", 0.0
    )


class Source:
    """What Vault holds, read by both the sync and the async fetch; counts the reads."""

    def __init__(self, answer: PublishedManifest | None) -> None:
        self.answer: PublishedManifest | Exception | None = answer
        self.reads = 0

    def fetch(self) -> PublishedManifest | None:
        self.reads += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def afetch(self) -> PublishedManifest | None:
        return self.fetch()


def watcher(source: Source) -> ManifestWatcher:
    w = ManifestWatcher("watched-agent", source.fetch, afetch=source.afetch, clock=lambda: 7.0)
    w.load_initial()
    return w


async def test_an_unchanged_version_is_nothing_new_and_not_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The idle case: one read, no event, and the validator never runs."""
    source = Source(published(1))
    w = watcher(source)

    def boom(*_: Any) -> None:
        raise AssertionError("validated an unchanged version")

    monkeypatch.setattr("broker.sidecar.watcher.validate_published", boom)
    assert await w.apoll() is None
    assert (source.reads, w.last_poll_at, w.poll_errors) == (2, 7.0, 0)


async def test_a_new_good_version_is_a_switch() -> None:
    """A newer valid version read on the loop becomes a Switch to it."""
    source = Source(published(1))
    w = watcher(source)
    source.answer = published(2)
    event = await w.apoll()
    assert isinstance(event, Switch)
    assert (event.old.policy_version, event.new.policy_version) == ("v1", "v2")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (None, "gone"),
        (published(3, content_hash="sha256:" + "0" * 64), "content hash"),
    ],
)
async def test_a_bad_answer_is_refused_once(answer: PublishedManifest | None, reason: str) -> None:
    """Deleted, or not matching its hash: a Refusal naming why (the last good one is kept)."""
    source = Source(published(1))
    w = watcher(source)
    source.answer = answer
    event = await w.apoll()
    assert isinstance(event, Refusal)
    assert reason in event.reason


async def test_vault_away_is_counted_not_refused() -> None:
    """A fetch that fails is a poll error, retried: no event, the last good manifest kept."""
    source = Source(published(1))
    w = watcher(source)
    source.answer = BackendUnavailable("Vault is unreachable")
    assert await w.apoll() is None
    assert (w.poll_errors, w.last_error) == (1, "Vault is unreachable")
    assert w.current is not None
    assert w.current.policy_version == "v1"


async def test_without_an_async_fetch_the_threaded_poll_answers() -> None:
    """A watcher given only the sync fetch still polls (in a thread), with the same answer."""
    source = Source(published(1))
    w = ManifestWatcher("watched-agent", source.fetch)
    w.load_initial()
    source.answer = published(2)
    assert isinstance(await w.apoll(), Switch)
