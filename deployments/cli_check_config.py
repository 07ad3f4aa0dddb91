"""`runbooks check-config FILE [--against prefect.yaml] [--resolve] [--connect]`: a config
checked before it is used. Without --against it only validates the file (and says what it
holds); with it, every problem incidents/config_check.py finds is printed with its line, and
the command fails (exit 1) when there is one. --resolve resolves every secret the config names
(RUNBOOKS_SECRET_<NAME> or a Prefect Secret block: values are never printed); --connect reaches
each environment's Kubernetes API (kubeconfig, or in a pod its ServiceAccount) and asks whether
the runbooks may patch each service's deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from deployments.cli_common import FAILED, OK, CliError
from incidents.config import ConfigError, ConfigFile, EnvironmentConfig, config_path, load_config
from incidents.config_check import Lines, Problem, check, secret_names
from integrations.errors import IntegrationError


def add_parser(sub: argparse._SubParsersAction) -> None:
    check_config = sub.add_parser("check-config", help="check a config before it is used (routes, people, secrets)")
    check_config.add_argument("file", nargs="?", help="the config (default: $RUNBOOKS_CONFIG or config/sandbox.yaml)")
    check_config.add_argument("--against", metavar="PREFECT_YAML",
                              help="the prefect.yaml whose deployments the routes must start")
    check_config.add_argument("--resolve", action="store_true", help="resolve every secret the config names")
    check_config.add_argument("--connect", action="store_true",
                              help="reach each environment's Kubernetes API and check the runbooks' permissions")


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file or config_path())
    try:
        config = load_config(path)
    except ConfigError as exc:
        line = _line_of(path, exc.fields)
        raise CliError(f"invalid: {exc}" if not line else f"{path}: line {line}: invalid: {exc}") from None
    _summary(path, config)
    problems: list[Problem] = []
    if args.against:
        try:
            prefect_yaml = Path(args.against).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {args.against}: {exc.strerror}") from None
        problems += check(config, path.read_text(), prefect_yaml)
    for name, env in config.environments.items():
        if args.resolve:
            problems += _unresolved(name, env)
        if args.connect:
            problems += _unreachable(name, env)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        print(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
        return FAILED
    print(f"{path}: OK" + (f" against {args.against}" if args.against else ""))
    return OK


def _line_of(path: Path, fields: tuple[tuple[str | int, ...], ...]) -> int:
    """The line of the first invalid field (0 when the file cannot be read as YAML)."""
    try:
        return Lines(path.read_text()).of(*fields[0]) if fields else 0
    except (OSError, yaml.YAMLError):
        return 0


def _summary(path: Path, config: ConfigFile) -> None:
    for name, env in config.environments.items():
        services = ", ".join(f"{s} ({c.rollback_strategy})" for s, c in env.services.items())
        print(f"{path}: environment {name}: production={env.production} drills_allowed={env.drills_allowed}; "
              f"services: {services}")
    print(f"{path}: {len(config.routing)} alert routing rules")


def _unresolved(name: str, env: EnvironmentConfig) -> list[Problem]:
    from tasks.context import SecretNotFound, resolve_secret

    problems = []
    for secret in secret_names(env):
        try:
            resolve_secret(secret)
        except SecretNotFound as exc:
            problems.append(Problem(0, f"{name}: {exc}"))
    return problems


def _unreachable(name: str, env: EnvironmentConfig) -> list[Problem]:
    from integrations.kubernetes import KubernetesClient

    kube = env.kubernetes
    try:
        with KubernetesClient(kube.kubeconfig, kube.context, timeout=kube.timeout_seconds) as client:
            refused = [f"{s.kubernetes.namespace}/{s.kubernetes.deployment}" for s in env.services.values()
                       if not client.can_i("patch", "apps", "deployments", s.kubernetes.namespace,
                                           s.kubernetes.deployment)]
    except IntegrationError as exc:
        return [Problem(0, f"{name}: Kubernetes unreachable: {exc}")]
    if refused:
        return [Problem(0, f"{name}: the runbooks may not patch deployment {', '.join(refused)} (bind "
                           "runbooks-responder in its namespace, deploy/kubernetes)")]
    return []
