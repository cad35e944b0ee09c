"""Runbook commands for security: revoke, kill, revive, rotate, status.

Every command acts with the operator's own Vault token, so Vault's policies decide who may
run it (``broker-security-operator`` may; ``broker-platform-editor`` may not), and every
command is recorded, with the operator's identity from Vault, in the operator audit trail
and in the control documents it writes. Commands change shared state in Vault; sidecars
see it on their next poll (a quarter of a second by default).

Targets are checked and writes are check-and-set (``broker.ops.controlbase``). What a command
reports as revoked was looked up again in Vault and refused (``broker.ops.sweep``); anything not
proven gone by the deadline is a failure, and the command exits non-zero."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from broker.core.controlstate import GLOBAL_PATH, REVOKED_PATH, agent_path, flag, integer, times
from broker.core.credids import prefix_of
from broker.core.errors import BrokerError, LedgerInvalid
from broker.core.fleetdoc import summary
from broker.ops.controlbase import ActionReport, ControlBase, Operator, given, usage, whoami
from broker.ops.sweep import Sweeper
from broker.vault._errors import translate_errors
from broker.vault.delegations import grants_of
from broker.vault.kv import kv_read
from broker.vault.layout import APPROLE_MOUNT, approle_role
from broker.vault.ledgerstore import ledger_path
from broker.vault.registry import SidecarLogin, logins
from broker.vault.revoke import (
    approle_exists,
    destroy_secret_ids,
    lease_info,
    secret_id_accessors,
    token_info,
)

__all__ = ["ActionReport", "Control", "Operator", "whoami"]

REVOKED_JTI_KEEP = 3600  # a revoked id is kept for the longest credential TTL, then dropped


class Control(ControlBase):
    # -- revoke ------------------------------------------------------------------------------

    def revoke_id(self, credential_id: str, reason: str) -> ActionReport:
        """One credential: a broker credential id or JWT id, a Vault token accessor, a lease id."""
        cid = given(credential_id, "--jti")
        prefix = prefix_of(cid)
        if prefix is not None:
            return self._revoke_broker_id(cid, prefix)
        if "/" in cid:
            if lease_info(self.client, cid, self.addr) is None:
                raise usage(f"--jti {cid!r}: Vault has no such lease", "unknown_credential")
            report = self._report(f"revoke --jti {cid}")
            self._sweeper(report).credentials("lease", [{"kind": "dynamic", "vault_id": cid}])
            return self._done(report)
        info = token_info(self.client, cid, self.addr)
        role = str((info or {}).get("role") or "")
        if info is None or not role.startswith("broker-"):
            raise usage(
                f"--jti {cid!r}: not a credential id the broker issued, nor a token accessor or "
                "lease id of one that Vault knows",
                "unknown_credential",
            )
        report = self._report(f"revoke --jti {cid}")
        agent = role.removeprefix("broker-")
        self._sweeper(report).credentials(agent, [{"kind": "vault_token", "vault_id": cid}])
        return self._done(report)

    def _revoke_broker_id(self, cid: str, prefix: str) -> ActionReport:
        owners = self._owners(prefix)
        if not owners:
            raise usage(
                f"--jti {cid!r}: no sidecar of any agent issued credential ids starting {prefix}",
                "unknown_credential",
            )
        report = self._report(f"revoke --jti {cid}")

        def add(doc: dict[str, Any]) -> dict[str, Any]:
            now = self.clock()
            jtis = {k: v for k, v in times(doc, REVOKED_PATH, "jtis").items() if v > now}
            return {"jtis": {**jtis, cid: now + REVOKED_JTI_KEEP}}

        version = self._update(REVOKED_PATH, add)
        report.say(f"{cid}: on the revocation list: refused by every sidecar and verifier")
        sweeper = self._sweeper(report)
        beats = {a: sweeper.heartbeat(a) for a in owners}
        live = [a for a, b in beats.items() if sweeper.live(b) and b.get("id_prefix") == prefix]
        acked = sweeper.await_acks(live, "revoked", version, self.ack_wait)
        running = {a: b for a, b in acked.items() if b.get("id_prefix") == prefix}
        for agent, beat in running.items():
            held = [c for c in self.outstanding(agent, beat) if cid in _ids(c)]
            sweeper.credentials(agent, held)
            if not held:
                report.say(
                    f"{cid}: {agent}'s sidecar read the revocation and holds no Vault "
                    "credential by this id (a JWT, or expired)"
                )
        if running:  # the issuing process runs and answered: what it lists is the truth
            return self._done(report)
        # The process that issued it is gone (or did not answer): revoke its tokens, which
        # takes in Vault every credential it ever minted, this one included.
        for agent in owners:
            n = sweeper.logins(agent, lambda e: e.id_prefix != prefix, "its sidecar is not running")
            if n == 0:
                report.say(f"{cid}: no token of its sidecar ({agent}) is left in Vault")
        return self._done(report)

    def revoke_agent(self, agent: str, action: str | None, reason: str) -> ActionReport:
        agent = self.known_agent(agent)
        if action is not None:
            action = self.known_action(agent, action)
            return self._revoke_action(agent, action)
        report = self._report(f"revoke --agent {agent}")
        # Read before the write: a sidecar that has seen it forgets what it held.
        beat = self.heartbeat(agent)
        now = self.clock()
        self._update(agent_path(agent), lambda _: {"revoked_before": now, "revoke_reason": reason})
        sweeper = self._sweeper(report)
        # The running sidecar's token too: it logs in again (its secret id still works).
        sweeper.logins(agent, lambda _: False, "everything the agent holds")
        sweeper.credentials(agent, self.outstanding(agent, beat))
        report.say(
            f"{agent}: action tokens issued before now refused by every sidecar and verifier"
        )
        return self._done(report)

    def _revoke_action(self, agent: str, action: str) -> ActionReport:
        report = self._report(f"revoke --agent {agent} --action {action}")
        now = self.clock()

        def mark(doc: dict[str, Any]) -> dict[str, Any]:
            per = times(doc, agent_path(agent), "revoked_before_action")
            return {"revoked_before_action": {**per, action: now}}

        version = self._update(agent_path(agent), mark)
        report.say(f"{agent} {action}: action tokens issued before now refused")
        sweeper = self._sweeper(report)
        beat = sweeper.heartbeat(agent)
        running = ""
        if sweeper.live(beat):
            beat = sweeper.await_ack(agent, "agent", version, self.ack_wait)
            running = str(beat.get("id_prefix") or "")
            held = [c for c in self.outstanding(agent, beat) if c.get("action") == action]
            sweeper.credentials(agent, held)
        # Tokens of sidecars no longer running: Vault cannot tell their credentials apart by
        # action, so they go whole (nobody uses them to mint any more).
        sweeper.logins(agent, lambda e: e.id_prefix == running, "its sidecar is not running")
        return self._done(report)

    def revoke_all(self, reason: str) -> ActionReport:
        report = self._report("revoke --all")
        beats = {agent: self.heartbeat(agent) for agent in self.agents()}  # before the write
        now = self.clock()
        self._update(GLOBAL_PATH, lambda _: {"revoked_before": now, "revoke_reason": reason})
        sweeper = self._sweeper(report)
        for agent, beat in beats.items():
            sweeper.logins(agent, lambda _: False, "revoke --all")
            sweeper.credentials(agent, self.outstanding(agent, beat))
        report.say("every agent: action tokens issued before now refused")
        return self._done(report)

    # -- kill switch -------------------------------------------------------------------------

    def kill(self, agent: str, reason: str, wait: float) -> ActionReport:
        """The kill switch: refuse everything, stop the agent's logins, revoke everything held."""
        agent = self.known_agent(agent)
        report = self._report(f"kill --agent {agent}")
        beats = {agent: self.heartbeat(agent)}  # before the flag: a sidecar that saw it forgets
        flags = self._kill_flag("killed", reason)
        version = self._update(agent_path(agent), lambda _: flags)
        report.confirmed = self._stop(report, beats, "agent", version, wait)
        return self._done(report)

    def kill_all(self, reason: str, wait: float) -> ActionReport:
        report = self._report("kill --all")
        beats = {agent: self.heartbeat(agent) for agent in self.agents()}
        flags = self._kill_flag("killed_all", reason)
        version = self._update(GLOBAL_PATH, lambda _: flags)
        report.confirmed = self._stop(report, beats, "global", version, wait)
        return self._done(report)

    def _kill_flag(self, key: str, reason: str) -> dict[str, Any]:
        now = self.clock()
        by = self.operator.identity
        return {key: True, "reason": reason, "by": by, "at": now, "revoked_before": now}

    def _stop(
        self,
        report: ActionReport,
        beats: dict[str, dict[str, Any]],
        document: str,
        version: int,
        wait: float,
    ) -> bool | None:
        """Wait (briefly) for running sidecars to confirm, then take away every login. True
        when every running sidecar confirmed, None when none was running. ``beats`` are the
        heartbeats from before the flag, which still list what each sidecar held."""
        sweeper = self._sweeper(report)
        running = [a for a, beat in beats.items() if sweeper.live(beat)]
        since, patience = self.clock(), min(wait, self.ack_wait)
        acked = sweeper.await_acks(running, document, version, patience)
        for agent in running:
            if acked.get(agent, {}).get("killed_seen_at"):
                report.say(
                    f"{agent}: sidecar refusing everything (confirmed after {self.clock() - since:.2f}s)"
                )
            else:
                report.say(
                    f"{agent}: the sidecar did not confirm within {patience:.1f}s (not running?); "
                    "its tokens are revoked below, so it can mint nothing"
                )
        for agent, beat in beats.items():
            self._workload_logins(report, agent, stopped=True)
            self._end_logins(report, agent)
            sweeper.logins(agent, lambda _: False, "kill switch")
            for seen in (beat, acked.get(agent, {})):
                self._heartbeat_token(sweeper, agent, seen)
            sweeper.credentials(agent, self.outstanding(agent, beat))
        if not running:
            return None
        return all(acked.get(a, {}).get("killed_seen_at") for a in running)

    def _end_logins(self, report: ActionReport, agent: str) -> None:
        """Destroy the AppRole secret ids: nobody logs in as the agent until ``revive``."""
        try:
            destroyed = destroy_secret_ids(self.client, agent, self.addr)
            left = secret_id_accessors(self.client, agent, self.addr)
        except BrokerError as exc:
            report.failures.append(f"{agent}: AppRole secret ids: {exc.detail}")
            return
        if left:
            report.failures.append(f"{agent}: {len(left)} AppRole secret ids still listed")
            return
        report.say(
            f"{agent}: {destroyed} AppRole secret id(s) destroyed; none left (verified): "
            "nothing can log in as the agent until `broker revive`"
        )

    def _heartbeat_token(self, sweeper: Sweeper, agent: str, beat: dict[str, Any]) -> None:
        """The token a sidecar reports in its heartbeat, if the registry missed it."""
        accessor = str(beat.get("accessor") or "")
        info = token_info(self.client, accessor, self.addr) if accessor else None
        if info is None:
            return
        if (info.get("meta") or {}).get("role_name") != approle_role(agent):
            # A sidecar run with a plain token (development): never revoke what may be an
            # operator's or the root token on a heartbeat's word.
            sweeper.tally.failures.append(
                f"{agent}: its sidecar uses a Vault token that is not an AppRole login of the "
                f"agent (accessor {accessor}): not revoked; revoke it by hand if it is the "
                "sidecar's own"
            )
            return
        sweeper.login(SidecarLogin(agent, "0" * 16, accessor), "from its heartbeat")

    # -- revive ------------------------------------------------------------------------------

    def revive(self, agent: str, reason: str) -> tuple[ActionReport, str]:
        """Clear the kill flag and issue a fresh secret id (the rotation path); the caller
        writes it where the sidecar reads it."""
        agent = self.known_agent(agent)
        reason = given(reason, "--reason")
        report = self._report(f"revive --agent {agent}")
        secret = self._fresh_secret(report, agent)
        self._workload_logins(report, agent, stopped=False)
        by = self.operator.identity
        now = self.clock()
        self._update(
            agent_path(agent), lambda _: {"killed": False, "reason": reason, "by": by, "at": now}
        )
        report.say(f"{agent}: enabled again ({reason})")
        global_doc = kv_read(self.client, GLOBAL_PATH, self.addr) or {}
        if flag(global_doc, GLOBAL_PATH, "killed_all"):
            report.failures.append(
                f"{agent}: still stopped by the fleet-wide kill (`broker kill --all`): "
                "`broker revive --all` lifts it"
            )
        return self._done(report), secret

    def revive_all(self, reason: str) -> tuple[ActionReport, dict[str, str]]:
        """Lift ``kill --all``; agents killed one by one stay killed until revived by name."""
        reason = given(reason, "--reason")
        report = self._report("revive --all")
        by = self.operator.identity
        now = self.clock()
        self._update(
            GLOBAL_PATH, lambda _: {"killed_all": False, "reason": reason, "by": by, "at": now}
        )
        secrets: dict[str, str] = {}
        for agent in self.agents():
            doc = kv_read(self.client, agent_path(agent), self.addr) or {}
            if flag(doc, agent_path(agent), "killed"):
                report.say(f"{agent}: stays killed (killed by name: `broker revive --agent`)")
            else:
                self._workload_logins(report, agent, stopped=False)
                if approle_exists(self.client, agent, self.addr):
                    secrets[agent] = self._fresh_secret(report, agent)
        report.say(f"fleet-wide kill lifted ({reason})")
        return self._done(report), secrets

    def _fresh_secret(self, report: ActionReport, agent: str) -> str:
        rotated, secret = self.rotate_agent_secret(agent)
        report.lines.extend(rotated.lines)
        return secret

    # -- rotate ------------------------------------------------------------------------------

    def rotate_signing_key(self, revoke_old: bool) -> ActionReport:
        report = self._report("rotate signing-key" + (" --revoke-old" if revoke_old else ""))

        def bump(doc: dict[str, Any]) -> dict[str, Any]:
            generation = integer(doc, GLOBAL_PATH, "signing_generation", 1) + 1
            return {"signing_generation": generation} | (
                {"min_generation": generation} if revoke_old else {}
            )

        doc, _ = self._update_doc(GLOBAL_PATH, bump)
        generation = doc["signing_generation"]
        old = "refused from now on" if revoke_old else "still valid until they expire"
        report.say(
            f"signing key generation {generation}: sidecars re-key on their next poll; older tokens {old}"
        )
        return report

    def rotate_agent_secret(self, agent: str) -> tuple[ActionReport, str]:

        agent = self.known_agent(agent)
        report = self._report(f"rotate agent-secret --agent {agent}")
        role = approle_role(agent)
        with translate_errors("AppRole secret rotation", self.addr):
            old = secret_id_accessors(self.client, agent, self.addr)
            new = self.client.auth.approle.generate_secret_id(
                role_name=role, mount_point=APPROLE_MOUNT
            )["data"]
            for accessor in old:
                self.client.auth.approle.destroy_secret_id_accessor(
                    role_name=role, secret_id_accessor=accessor, mount_point=APPROLE_MOUNT
                )
                report.revoked += 1
        report.say(
            f"{agent}: new AppRole secret id issued; {report.revoked} old secret ids destroyed"
        )
        return report, str(new["secret_id"])

    def role_id(self, agent: str) -> str:

        with translate_errors("AppRole role id read", self.addr):
            data = self.client.auth.approle.read_role_id(
                role_name=approle_role(agent), mount_point=APPROLE_MOUNT
            )
        return str(data["data"]["role_id"])

    def rotate_backend_root(self, mount: str, connection: str) -> ActionReport:
        from broker.vault.database import rotate_root

        report = self._report(f"rotate backend-root --mount {mount} --connection {connection}")
        rotate_root(self.client, mount=mount, connection_name=connection)
        report.say(
            f"{mount}/{connection}: Vault rotated the root credential; only Vault knows it now"
        )
        return report

    # -- status ------------------------------------------------------------------------------

    def status(self) -> Iterator[dict[str, Any]]:
        now = self.clock()
        global_doc = kv_read(self.client, GLOBAL_PATH, self.addr) or {}
        killed_all = flag(global_doc, GLOBAL_PATH, "killed_all")
        for agent in self.agents():
            beat = self.heartbeat(agent)
            doc = kv_read(self.client, agent_path(agent), self.addr) or {}
            yield {
                "agent": agent,
                "killed": flag(doc, agent_path(agent), "killed") or killed_all,
                "kill_reason": doc.get("reason", ""),
                "heartbeat_age": round(now - float(beat["at"]), 1) if beat.get("at") else None,
                "in_flight": beat.get("in_flight"),
                "vault_credentials": len(self.outstanding(agent, beat)),
                "sidecar_tokens": len(logins(self.client, agent, self.addr)),
                "signing_generation": beat.get("generation"),
                "node_agent": beat.get("node_agent"),
                "ledger": self.ledger(agent, now),
                "delegations": grants_of(self.client, agent, now, self.addr),
            }

    def ledger(self, agent: str, now: float) -> dict[str, Any] | None:
        """The fleet usage ledger per budget (``BROKER_LEDGER=vault``): used, leased per
        replica, free; None when the agent's replicas keep local ledgers."""
        path = ledger_path(agent)
        doc = kv_read(self.client, path, self.addr)
        if doc is None:
            return None
        try:
            return summary(doc, path, now)
        except LedgerInvalid as exc:
            return {"error": exc.code, "detail": exc.detail}


def _ids(cred: dict[str, Any]) -> tuple[str, str]:
    return str(cred.get("credential_id", "")), str(cred.get("vault_id", ""))
