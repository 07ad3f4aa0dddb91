"""`runbooks slack-manifest`: the Slack app's manifest, generated from the config, so that a
team creates the app in minutes (api.slack.com/apps -> Create New App -> From a manifest).

It holds what the runbooks use and no more: the `/incident` command (deployments/slack_commands.py)
and the interactivity Request URL (deployments/slack_interactions.py), both on the intake's
public address (the environment's `approval.page_url`, or --url), and the bot scopes the app's
calls need: `chat:write` (chat.postMessage, chat.update) and `commands` (the slash command;
views.open needs no scope of its own). deploy/slack/manifest.yaml is this command's output for
the example production config; a test keeps the two equal."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from deployments.cli_common import OK, CliError
from deployments.slack_commands import COMMAND, LEAD_VERBS, MEMBER_VERBS
from incidents.config import ConfigError, config_path, load_config
from incidents.errors import RunbookError

BOT_SCOPES = ("chat:write", "commands")
NAME = "Incident Runbooks"
USAGE_HINT = ("declare <service> <scenario> [P0-P3] [summary] | status [id] | "
              "ack|resolve|severity|role|note|cancel|summary <id> …")
# the manifest's documented limits (api.slack.com/reference/manifests)
LIMITS = {"name": 35, "description": 140, "display_name": 80, "command": 32, "command_description": 2000,
          "usage_hint": 1000}
_HTTPS = re.compile(r"^https://[^/\s]+(/\S*)?$")


class ManifestError(RunbookError, ValueError):
    """The manifest cannot be made (no public HTTPS address for the intake)."""


def manifest(base_url: str) -> dict[str, Any]:
    """The app's manifest with its URLs on the intake at `base_url` (HTTPS, as Slack requires)."""
    base = base_url.rstrip("/")
    if not _HTTPS.match(base):
        raise ManifestError(f"Slack sends requests to HTTPS URLs only; {base_url!r} is not one (give --url)")
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": NAME,
            "description": "Incident-response runbooks: declare, acknowledge, approve and resolve incidents.",
            "background_color": "#8b1a1a",
        },
        "features": {
            "bot_user": {"display_name": "runbooks", "always_online": True},
            "slash_commands": [{
                "command": COMMAND, "url": f"{base}/slack/commands",
                "description": "Run an incident: declare it, acknowledge, hand roles over, note, resolve",
                "usage_hint": USAGE_HINT, "should_escape": True,  # mentions arrive as <@U…|name>
            }],
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": {
            "interactivity": {"is_enabled": True, "request_url": f"{base}/slack/interactions"},
            "org_deploy_enabled": False, "socket_mode_enabled": False, "token_rotation_enabled": False,
        },
    }


def problems(data: Any) -> list[str]:
    """What in `data` breaks the manifest schema's fields the runbooks rely on (empty: valid)."""
    found: list[str] = []
    info = (data or {}).get("display_information") or {}
    if not 0 < len(info.get("name", "")) <= LIMITS["name"]:
        found.append(f"display_information.name must be 1 to {LIMITS['name']} characters")
    if len(info.get("description", "")) > LIMITS["description"]:
        found.append(f"display_information.description is at most {LIMITS['description']} characters")
    features = data.get("features") or {}
    if not 0 < len((features.get("bot_user") or {}).get("display_name", "")) <= LIMITS["display_name"]:
        found.append("features.bot_user.display_name must be 1 to 80 characters (a bot posts the messages)")
    commands = features.get("slash_commands") or []
    for command in commands:
        if not re.match(r"^/[a-z0-9_-]{1,31}$", command.get("command", "")):
            found.append(f"slash command {command.get('command')!r} must be / and 1 to 31 lowercase characters")
        if not _HTTPS.match(command.get("url", "")):
            found.append(f"slash command {command.get('command')} needs an HTTPS url")
        if not 0 < len(command.get("description", "")) <= LIMITS["command_description"]:
            found.append("a slash command's description must be 1 to 2000 characters")
        if len(command.get("usage_hint", "")) > LIMITS["usage_hint"]:
            found.append("a slash command's usage_hint is at most 1000 characters")
    if [c.get("command") for c in commands] != [COMMAND]:
        found.append(f"features.slash_commands must hold {COMMAND} (the intake answers it at /slack/commands)")
    if not all(c.get("url", "").endswith("/slack/commands") for c in commands):
        found.append(f"{COMMAND}'s url must be the intake's /slack/commands")
    scopes = ((data.get("oauth_config") or {}).get("scopes") or {}).get("bot") or []
    if sorted(scopes) != sorted(BOT_SCOPES):
        found.append(f"oauth_config.scopes.bot must be exactly {', '.join(BOT_SCOPES)} (what the app calls)")
    interactivity = (data.get("settings") or {}).get("interactivity") or {}
    if interactivity.get("is_enabled") is not True or not _HTTPS.match(interactivity.get("request_url", "")) \
            or not interactivity["request_url"].endswith("/slack/interactions"):
        found.append("settings.interactivity must be enabled with the intake's HTTPS /slack/interactions")
    return found


def render(data: dict[str, Any], source: str) -> str:
    head = (f"# The Slack app for the runbooks. Generated; do not edit by hand:\n"
            f"#   runbooks slack-manifest {source}\n"
            f"# Create the app from it (api.slack.com/apps -> Create New App -> From a manifest),\n"
            f"# install it, invite it to the incident channels, and give the intake its signing secret\n"
            f"# (RUNBOOKS_SLACK_SIGNING_SECRET) and the config its bot token (slack.bot_token_secret).\n"
            f"# Commands: {', '.join(sorted(MEMBER_VERBS | LEAD_VERBS | {'declare', 'status'}))}.\n")
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("slack-manifest", help="the Slack app's manifest (the /incident command, buttons)")
    command.add_argument("file", nargs="?", help="the config (default: $RUNBOOKS_CONFIG or config/sandbox.yaml)")
    command.add_argument("--env", help="the environment whose approval.page_url is the intake (default: the first)")
    command.add_argument("--url", help="the intake's public HTTPS address (default: the environment's page_url)")
    command.add_argument("--output", "-o", help="write it here (default: print it)")


def cmd_slack_manifest(args: argparse.Namespace) -> int:
    path = Path(args.file or config_path())
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(f"invalid: {exc}") from None
    name = args.env or next(iter(config.environments))
    if name not in config.environments:
        raise CliError(f"environment {name!r} is not configured (known: {', '.join(sorted(config.environments))})")
    url = args.url or config.environments[name].approval.page_url
    if not url:
        raise CliError(f"{name} has no approval.page_url: give the intake's public address with --url")
    try:
        data = manifest(url)
    except ManifestError as exc:
        raise CliError(str(exc)) from None
    source = " ".join([args.file or ""] + ([f"--env {args.env}"] if args.env else [])
                      + ([f"--url {args.url}"] if args.url else [])).strip()
    text = render(data, source)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {COMMAND} at {data['features']['slash_commands'][0]['url']}, buttons at "
              f"{data['settings']['interactivity']['request_url']}")
    else:
        print(text, end="")
    return OK
