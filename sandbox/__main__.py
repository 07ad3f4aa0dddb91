"""Run the sandbox in the foreground: `python -m sandbox --port 8790 --state-dir .sandbox`."""

from __future__ import annotations

import argparse
import os
import signal
import threading

from sandbox.world import Sandbox


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--kube-port", type=int, default=8791, help="the Kubernetes API (TLS)")
    parser.add_argument("--state-dir", default=".sandbox", help="where the kubeconfig is written")
    parser.add_argument("--ready-delay", type=float, default=1.0, help="seconds until a new healthy pod is ready")
    parser.add_argument("--database-url", default=None,
                        help="the api service's PostgreSQL (its /health reads table orders there)")
    args = parser.parse_args()
    # what Slack and PagerDuty sign their requests to the intake with, and where the intake is
    sandbox = Sandbox(args.host, args.port, args.kube_port, args.state_dir, ready_delay=args.ready_delay,
                      database_url=args.database_url,
                      slack_signing_secret=os.environ.get("RUNBOOKS_SLACK_SIGNING_SECRET"),
                      pagerduty_webhook_secret=os.environ.get("RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET")).start()
    intake = os.environ.get("RUNBOOKS_INTAKE_URL")
    if intake:
        sandbox.slack.interactions_url = intake.rstrip("/") + "/slack/interactions"
        sandbox.slack.commands_url = intake.rstrip("/") + "/slack/commands"
        sandbox.pagerduty.webhook_url = intake.rstrip("/") + "/pagerduty/webhooks"
    print(f"sandbox listening on {sandbox.url} (Kubernetes API {sandbox.kube_url}); kubeconfig at {sandbox.kubeconfig}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sandbox.stop()


if __name__ == "__main__":
    main()
