"""Who is paged: the playbook's roles (with backups and Slack IDs) and the Escalation Matrix."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from incidents.config_base import SLACK_GROUP_ID, SLACK_USER_ID, _Model
from incidents.models import Severity

_HANDLE = r"^@?[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,99})?$"  # @user or @org/team
HANDLE = _HANDLE


class Contact(_Model):
    """A person (or rota) to page, with a backup; a plain handle in YAML means no backup."""

    primary: str = Field(pattern=_HANDLE)
    backup: str | None = Field(None, pattern=_HANDLE)

    @model_validator(mode="before")
    @classmethod
    def _from_handle(cls, value: Any) -> Any:
        return {"primary": value} if isinstance(value, str) else value

    @property
    def handles(self) -> list[str]:
        return [self.primary] + ([self.backup] if self.backup and self.backup != self.primary else [])


class SlackIdentity(_Model):
    """Who a handle is in Slack: a member, a user group, or both. Slack notifies only for
    mentions written with these IDs (`<@U…>`, `<!subteam^S…>`); "@name" in text rings nobody."""

    user: str | None = Field(None, pattern=SLACK_USER_ID)
    group: str | None = Field(None, pattern=SLACK_GROUP_ID)

    @model_validator(mode="after")
    def _something(self) -> "SlackIdentity":
        if not self.user and not self.group:
            raise ValueError("give user (a member ID, U…) and/or group (a user group ID, S…)")
        return self

    def mention(self) -> str:
        return " ".join(
            ([f"<@{self.user}>"] if self.user else []) + ([f"<!subteam^{self.group}>"] if self.group else [])
        )


def _contact(handle: str = "@mpcstudy") -> Contact:
    return Contact(primary=handle, backup=handle)


class Roles(_Model):
    """The playbook's Incident Roles and Emergency Contacts (its author used one placeholder
    for all). `team` lists everyone "all team members" means for a P0; the roles and contacts
    are always part of it."""

    incident_commander: str = Field("@mpcstudy", pattern=_HANDLE)
    communications: str = Field("@mpcstudy", pattern=_HANDLE)
    technical_owner: str = Field("@mpcstudy", pattern=_HANDLE)
    documentation: str = Field("@mpcstudy", pattern=_HANDLE)
    on_call: Contact = _contact()
    team_lead: Contact = _contact()
    security: Contact = _contact()
    infrastructure: Contact = _contact()
    team: list[str] = []
    # display handle -> Slack IDs, e.g. "@oncall-ola": {user: U0123ABCD}; a handle without an
    # entry is shown as text and notifies nobody
    slack_ids: dict[str, SlackIdentity] = {}

    @model_validator(mode="after")
    def _known_handles(self) -> "Roles":
        people = set(self.resolve("team"))
        unknown = sorted(h for h in self.slack_ids if h not in people)
        if unknown:
            raise ValueError(f"slack_ids names {', '.join(unknown)}, who is not in roles (check the spelling)")
        return self

    def mention(self, handle: str) -> str:
        """Slack's notifying syntax for a handle with IDs; the handle as text otherwise."""
        identity = self.slack_ids.get(handle)
        return identity.mention() if identity else handle

    def handle_of(self, slack_user: str) -> str | None:
        """The handle whose Slack identity is this member (None: not in the config)."""
        return next((h for h, identity in self.slack_ids.items() if slack_user and identity.user == slack_user), None)

    def mentions(self, handles: list[str]) -> list[str]:
        return [self.mention(h) for h in handles]

    @field_validator("team")
    @classmethod
    def _team_handles(cls, value: list[str]) -> list[str]:
        for handle in value:
            if not re.match(_HANDLE, handle):
                raise ValueError(f"{handle!r} is not a handle (letters, digits, '_', '.', '-', optional leading @)")
        return value

    def resolve(self, reference: str) -> list[str]:
        """Handles for a reference used in escalation levels: a role or contact name
        (`on_call`), a contact's backup (`on_call.backup`), or `team` (everyone)."""
        name, _, part = reference.partition(".")
        if name == "pagerduty":
            return []  # a pager, not a person: see SeverityPolicy.pagers
        if name == "team":
            people = [self.incident_commander, self.communications, self.technical_owner, self.documentation]
            for contact in (self.on_call, self.team_lead, self.security, self.infrastructure):
                people += contact.handles
            return list(dict.fromkeys(people + self.team))
        value = getattr(self, name)
        if isinstance(value, Contact):
            return [value.backup or value.primary] if part == "backup" else [value.primary]
        return [value]

    def holder(self, role: str, assigned: dict[str, str] | None = None) -> str:
        """Who holds an incident role (`commander`, `comms`, `owner`, `scribe`): the one it was
        handed over to, else the rota's."""
        return (assigned or {}).get(role) or getattr(self, INCIDENT_ROLES[role])

    def table(self, assigned: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
        """(role, contact, backup) rows, as the playbook's role and contact tables show them;
        `assigned`: an incident's own holders (role -> handle), over the rota's."""
        by_field = {field: role for role, field in INCIDENT_ROLES.items()}
        rows = [(n.replace("_", " ").title(), self.holder(by_field[n], assigned), "") for n in
                ("incident_commander", "communications", "technical_owner", "documentation")]
        for n in ("on_call", "team_lead", "security", "infrastructure"):
            contact = getattr(self, n)
            rows.append((n.replace("_", " ").title(), contact.primary, contact.backup or ""))
        return rows


# The playbook's incident roles, as commands name them, and the rota field each defaults to.
INCIDENT_ROLES = {"commander": "incident_commander", "comms": "communications", "owner": "technical_owner",
                  "scribe": "documentation"}
ROLE_TITLES = {"commander": "Incident Commander", "comms": "Communications lead", "owner": "Technical Owner",
               "scribe": "Scribe"}
_ROLE_REFERENCE = re.compile(r"^(team|incident_commander|communications|technical_owner|documentation|"
                             r"(on_call|team_lead|security|infrastructure)(\.backup)?|pagerduty\.[a-z0-9][a-z0-9-]{0,62})$")
PAGER_PREFIX = "pagerduty."


class SeverityPolicy(_Model):
    """One row of the Escalation Matrix. `levels[0]` is notified when the incident opens; each
    response time that passes without an acknowledgment escalates to the next level."""

    response_minutes: float = Field(gt=0, le=7 * 24 * 60)
    levels: list[list[str]] = Field(min_length=1)
    status_minutes: float = Field(gt=0, le=7 * 24 * 60)  # Status Update cadence while open
    # the Communications lead's stakeholder update drafts while open (None: no drafts)
    stakeholder_minutes: float | None = Field(None, gt=0, le=7 * 24 * 60)

    @field_validator("levels")
    @classmethod
    def _references(cls, value: list[list[str]]) -> list[list[str]]:
        for level in value:
            for ref in level:
                if not _ROLE_REFERENCE.match(ref):
                    raise ValueError(f"{ref!r} is not a role: use team, incident_commander, communications, "
                                     "technical_owner, documentation, on_call, team_lead, security, infrastructure "
                                     "(a contact's backup as e.g. on_call.backup), or pagerduty.<service>")
        return value

    def pagers(self, level: int) -> list[str]:
        """The PagerDuty services (config `pagerduty.services`) triggered at `level`."""
        level = min(level, len(self.levels) - 1)
        return [ref[len(PAGER_PREFIX):] for ref in self.levels[level] if ref.startswith(PAGER_PREFIX)]


class EscalationMatrix(_Model):
    """The playbook's Escalation Matrix as defaults: P0 5 min, all team members; P1 15 min,
    on-call + team lead; P2 1 h, team lead; P3 4 h, issue only. Stakeholder update drafts every
    30 min for P0 and every hour for P1 (the playbook names the duty, not the cadence)."""

    P0: SeverityPolicy = SeverityPolicy(response_minutes=5, levels=[["team"], ["on_call.backup", "team_lead.backup",
                                                                               "infrastructure.backup"]],
                                        status_minutes=15, stakeholder_minutes=30)
    P1: SeverityPolicy = SeverityPolicy(response_minutes=15, levels=[["on_call", "team_lead"],
                                                                     ["on_call.backup", "team_lead.backup"], ["team"]],
                                        status_minutes=30, stakeholder_minutes=60)
    P2: SeverityPolicy = SeverityPolicy(response_minutes=60, levels=[["team_lead"], ["team_lead.backup", "on_call"]],
                                        status_minutes=120)
    P3: SeverityPolicy = SeverityPolicy(response_minutes=240, levels=[[], ["team_lead"]], status_minutes=480)

    def policy(self, severity: Severity | str) -> SeverityPolicy:
        policy: SeverityPolicy = getattr(self, getattr(severity, "value", severity))
        return policy
