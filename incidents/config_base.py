"""What every config model shares: the base model, the config error, secret names and the
patterns identifiers must match."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from incidents.errors import RunbookError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "sandbox.yaml"
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_REPO = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(RunbookError):
    """An invalid config file: says which file, which field and why. `fields`: the path of each
    invalid field (keys and list indexes), where the file's structure was understood."""

    def __init__(self, message: str, fields: tuple[tuple[str | int, ...], ...] = ()):
        super().__init__(message)
        self.fields = fields


SECRET_ENV_PREFIX = "RUNBOOKS_SECRET_"


def secret_env_var(name: str) -> str:
    """The environment variable that holds secret `name` (`github-token`: RUNBOOKS_SECRET_GITHUB_TOKEN)."""
    return SECRET_ENV_PREFIX + name.upper().replace("-", "_")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_secret_name(value: str) -> str:
    if not _SECRET_NAME.match(value):
        raise ValueError("must be the name of a secret (lower-case letters, digits, '-'), not the secret itself; "
                         "put the value in a Prefect Secret block or the environment variable "
                         f"{secret_env_var('<name>')}")
    return value


_CHANNEL_ID = r"^[CGD][A-Z0-9]{2,20}$"  # a Slack conversation ID, e.g. C0123ABCD (not "#incidents")
SLACK_USER_ID = r"^[UW][A-Z0-9]{2,20}$"   # a Slack member ID: U… or, on Enterprise Grid, W…
SLACK_GROUP_ID = r"^S[A-Z0-9]{2,20}$"     # a Slack user group (subteam) ID
