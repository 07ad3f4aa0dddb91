"""What `runbooks check-config FILE --against prefect.yaml` finds wrong in a config before it is
used: each problem with the line of the file it is about. Pure: the caller reads the files,
and resolves secrets or reaches clusters itself (`--resolve`, `--connect`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, get_args

import yaml

from incidents.alerts import Route
from incidents.config import ConfigFile, EnvironmentConfig

SCENARIOS: tuple[str, ...] = get_args(Route.model_fields["scenario"].annotation)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the file has no line for it
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class Lines:
    """Line numbers of a YAML document's nodes, by path (mapping keys and list indexes)."""

    def __init__(self, text: str):
        self._root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    def of(self, *path: str | int) -> int:
        node, line = self._root, 0
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == part), None)
                if found is None:
                    return line
                line, node = found[0].start_mark.line + 1, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def deployment_names(prefect_yaml: str) -> set[str]:
    """`<flow name>/<deployment name>` for each deployment of a prefect.yaml; the flow name is
    the entrypoint's function name with `_` as `-` (as the flows name themselves)."""
    data = yaml.safe_load(prefect_yaml) or {}
    names = set()
    for d in data.get("deployments") or []:
        function = str(d.get("entrypoint", "")).rsplit(":", 1)[-1]
        names.add(f"{function.replace('_', '-')}/{d.get('name')}")
    return names


def route_environments(route: Route, config: ConfigFile) -> list[str]:
    """The environments a route's runs can be for: its own, the one it matches on, or any."""
    if route.environment:
        return [route.environment]
    if "environment" in route.match:
        return [route.match["environment"]]
    return sorted(config.environments)


def check_routes(config: ConfigFile, lines: Lines, deployments: set[str]) -> list[Problem]:
    problems = []
    for n, route in enumerate(config.routing):
        at = lines.of("routing", n)
        for environment in route_environments(route, config):
            name = f"{route.scenario}/{environment}"
            if environment not in config.environments:
                problems.append(Problem(at, f"route {n + 1} sends alerts to environment {environment!r}, which "
                                            "this config does not define"))
            elif name not in deployments:
                problems.append(Problem(at, f"route {n + 1} starts {name}, which prefect.yaml does not deploy"))
    routed = {route.scenario for route in config.routing}
    for scenario in SCENARIOS:
        if scenario not in routed:
            problems.append(Problem(lines.of("routing") or lines.of("environments"),
                                    f"no route starts {scenario}: its alerts would be answered 'unmatched'"))
    return problems


def _handles(env: EnvironmentConfig) -> Iterable[tuple[tuple[str, ...], str]]:
    roles = env.roles
    for name in ("incident_commander", "communications", "technical_owner", "documentation"):
        yield (name,), getattr(roles, name)
    for name in ("on_call", "team_lead", "security", "infrastructure"):
        contact = getattr(roles, name)
        yield (name, "primary"), contact.primary
        if contact.backup:
            yield (name, "backup"), contact.backup
    for n, handle in enumerate(roles.team):
        yield ("team", str(n)), handle


def check_people(name: str, env: EnvironmentConfig, lines: Lines) -> list[Problem]:
    """With a Slack app, every handle pages someone (a handle without a Slack ID notifies nobody);
    four-eyes severities have two approvers who may answer them."""
    problems = []
    if env.slack.bot_token_secret:
        for path, handle in _handles(env):
            if handle not in env.roles.slack_ids:
                at = lines.of("environments", name, "roles", *[int(p) if p.isdigit() else p for p in path])
                problems.append(Problem(at, f"{name}: {'.'.join(path)} is {handle}, who has no entry in "
                                            "roles.slack_ids: a page would notify nobody"))
    approval = env.approval
    for severity in approval.four_eyes:
        able = [a.name for a in approval.approvers if severity in a.severities]
        if len(able) < 2:
            problems.append(Problem(lines.of("environments", name, "approval", "four_eyes"),
                                    f"{name}: four-eyes for {severity} needs two approvers who may answer "
                                    f"{severity}; there {'is' if len(able) == 1 else 'are'} {len(able)}"
                                    f"{' (' + ', '.join(able) + ')' if able else ''}"))
    return problems


def secret_names(env: EnvironmentConfig) -> list[str]:
    """Every secret the environment names (the values are resolved at run time)."""
    found: list[str] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and (key.endswith("_secret") or key == "dsn_secret" or key == "url_secret"):
            found.append(value)

    walk(env.model_dump(mode="json"))
    return list(dict.fromkeys(found))


def check(config: ConfigFile, text: str, prefect_yaml: str) -> list[Problem]:
    lines = Lines(text)
    problems = check_routes(config, lines, deployment_names(prefect_yaml))
    for name, env in config.environments.items():
        problems += check_people(name, env, lines)
    return sorted(problems, key=lambda p: p.line)
