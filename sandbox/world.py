"""The sandbox world on one port: the Kubernetes API, GitHub under /github, a Slack incoming
webhook sink under /slack, demo services under /services/<name>, and controls under /_sandbox."""

from __future__ import annotations

import base64
import json
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.app_database import prepare_app_database
from sandbox.cluster import REVISION, Cluster, Seed, canary_of, now_iso, seed_deployment
from sandbox.github import GitHub
from sandbox.http import LOST, Fault, Faults, Request, Response, Router, serve
from sandbox.kube_api import KubeApi
from sandbox.nodes import STATES as NODE_STATES
from sandbox.pagerduty import PagerDuty
from sandbox.rbac import ADMIN, Authorizer, Rbac, render, service_account_user
from sandbox.services import BAD_REVISION_ERROR_SHARE, DemoService, volume_stats
from sandbox.services import endpoint as service_endpoint
from sandbox.slack import Slack
from sandbox.tls import make_certificate, server_context

NAMESPACE = "sandbox"
KUBE_TOKEN = "sandbox-kube-token"  # the cluster admin's: tests, kubectl and the sandbox's own CI
# The runbooks' ServiceAccount (deploy/kubernetes): what the runbooks use, authorized against the
# Roles that `kubectl kustomize deploy/kubernetes/overlays/sandbox` renders.
RUNBOOKS_KUBE_TOKEN = "sandbox-runbooks-token"
RUNBOOKS_USER = service_account_user("runbooks", "runbooks")
GITHUB_TOKEN = "sandbox-github-token"
SLACK_PATH = "/slack/services/T0SANDBOX/B0SANDBOX/sandbox-webhook-secret"
SLACK_SECURITY_PATH = "/slack/services/T0SANDBOX/B0SECURITY/security-webhook-secret"
IMAGE = "registry.sandbox.local/acme/{name}"


class Sandbox:
    """Start with `Sandbox(port=0).start()`; `url`, `kubeconfig`, `slack_webhook_url` say where it is."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, kube_port: int = 0, state_dir: Path | str | None = None,
                 ready_delay: float = 1.0, tick_seconds: float = 0.2, progress_deadline: int = 60,
                 database_url: str | None = None, slack_signing_secret: str | None = None,
                 pagerduty_webhook_secret: str | None = None, rbac_overlay: str | None = "sandbox"):
        """`rbac_overlay`: the overlay of deploy/kubernetes/overlays whose Roles authorize the
        runbooks' token (None: any token may do anything)."""
        self.host, self.port, self.kube_port = host, port, kube_port
        self.authorizer = Authorizer({KUBE_TOKEN: ADMIN, RUNBOOKS_KUBE_TOKEN: RUNBOOKS_USER},
                                     Rbac.from_manifests(render(rbac_overlay)) if rbac_overlay else None)
        self.database_url = database_url
        if database_url:
            prepare_app_database(database_url)
        self.cert_pem, self._key_pem = make_certificate(host)
        self.state_dir = Path(state_dir) if state_dir else None
        self.ready_delay, self.tick_seconds, self.progress_deadline = ready_delay, tick_seconds, progress_deadline
        self.faults = Faults()
        self.slack = Slack("", slack_signing_secret)  # base_url is set once the port is known
        self.pagerduty = PagerDuty(pagerduty_webhook_secret)
        # everything ever sent to the fake Slack and GitHub (never reset): what left the runbooks
        self.received_bodies: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._serving = threading.Lock()  # the ticker and a /metrics read both count what was served
        self._served_at = time.monotonic()
        self._servers: list = []
        self.router = Router()
        self.router.add("GET", "/_sandbox/healthz", lambda req: Response.json({"ok": True}))
        self.router.add("POST", "/_sandbox/deploy", self._deploy)
        self.router.add("POST", "/_sandbox/faults", self._set_fault)
        self.router.add("DELETE", "/_sandbox/faults", self._clear_faults)
        self.router.add("GET", "/_sandbox/slack/messages", lambda req: Response.json(self.slack_messages))
        self.router.add("DELETE", "/_sandbox/slack/messages", self._clear_slack)
        self.router.add("POST", "/_sandbox/slack/press", self.slack.press)
        self.router.add("POST", "/_sandbox/slack/command", self.slack.command)
        self.router.add("POST", "/_sandbox/slack/submit", self.slack.submit)
        self.router.add("GET", "/_sandbox/slack/views", lambda req: Response.json(self.slack.views))
        self.router.add("POST", "/_sandbox/slack/app", self._configure_app)
        self.router.add("GET", "/_sandbox/pagerduty/events", self.pagerduty.read_events)
        self.router.add("GET", "/_sandbox/pagerduty/alerts", self.pagerduty.read_alerts)
        self.router.add("POST", "/_sandbox/pagerduty/act", self.pagerduty.person_acts)
        self.router.add("POST", "/_sandbox/reset", self._reset)
        self.router.add("GET", "/services/{name}/{endpoint}", self._service_endpoint)
        self.router.add("GET", "/dependencies/{name}/health", self._dependency_health)
        self.router.add("POST", "/_sandbox/load", self._set_load)
        self.router.add("POST", "/_sandbox/dependency", self._set_dependency)
        self.router.add("POST", "/_sandbox/memory", self._set_memory_leak)
        self.router.add("POST", "/_sandbox/latency", self._set_latency)
        self.router.add("POST", "/_sandbox/node", self._set_node)
        self.router.add("POST", "/_sandbox/canary", self._set_canary)
        self.router.add("POST", "/_sandbox/volume", self._set_volume)
        self.router.add("GET", "/_sandbox/kubelet/metrics", lambda req: Response.text(
            volume_stats(list(self.services.values()))))
        self.router.add("POST", "/_sandbox/services", self._add_service)
        self.router.add("POST", "/_sandbox/logs", self._add_log_lines)
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.cluster = Cluster(ready_delay=self.ready_delay, progress_deadline=self.progress_deadline)
            self.kube = KubeApi(self.cluster, self.authorizer, self._served_per_pod)
            self.github = GitHub(GITHUB_TOKEN)
            self.services: dict[str, DemoService] = {}
            self.slack.clear()
            self.pagerduty.clear()
            self.faults.clear()
            self._seed()

    def _seed(self) -> None:
        c, gh = self.cluster, self.github
        c.create("namespaces", "", {"metadata": {"name": NAMESPACE}})
        c.create("namespaces", "", {"metadata": {"name": "default"}})
        seeded = {"creationTimestamp": now_iso(time.time() - 72 * 3600)}  # config as old as the first release
        c.create("configmaps", NAMESPACE, {"metadata": {"name": "api-flags", **seeded},
                                           "data": {"circuit_breaker": "off"}})
        c.create("configmaps", NAMESPACE, {"metadata": {"name": "api-config", **seeded}, "data": {"log_level": "info"}})
        c.create("secrets", NAMESPACE, {"metadata": {"name": "api-credentials", **seeded}, "type": "Opaque",
                                        "data": {"token": "c2FuZGJveC1vbmx5", "api-key": "c2FuZGJveC1rZXk="}})
        seed_deployment(c, Seed(NAMESPACE, "database", ["registry.sandbox.local/library/postgres:15.6"], replicas=1,
                                age_hours=[240.0]))
        gh.repo("acme/incidents")
        c.create("persistentvolumeclaims", NAMESPACE, {
            "metadata": {"name": "api-data", **seeded},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}})
        self._seed_service("api", ["v1.4.1", "v1.5.0"], secrets=("api-credentials",), claims=("api-data",))
        c.create("ingresses", NAMESPACE, {  # ingress-nginx in front of api: it sees the real client address
            "metadata": {"name": "api", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "api.sandbox.local", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "api", "port": {"number": 8080}}}}]}}]}})
        self._seed_service("frontend", ["v3.2.0"])

    def _seed_service(self, name: str, versions: list[str], secrets: tuple[str, ...] = (),
                      claims: tuple[str, ...] = ()) -> None:
        """A demo service like api: a deployment with its revisions, its repo with commits,
        deploy runs and a working rollback workflow."""
        now, gh = time.time(), self.github
        images = [f"{IMAGE.format(name=name)}:{v}" for v in versions]
        ages = [72.0, 48.0][-len(versions):]
        seed_deployment(self.cluster, Seed(NAMESPACE, name, images, replicas=3, age_hours=ages, secrets=secrets,
                                           claims=claims))
        repo = f"acme/{name}"
        for version, age in zip(versions, ages):
            gh.add_commit(repo, f"Release {version}", at=now - age * 3600 - 600)
            gh.record_run(repo, "deploy.yml", f"Deploy {version}", "success", at=now - age * 3600,
                          log=[f"Deploying {images[versions.index(version)]}", "Deployed"])
        gh.add_workflow(repo, "rollback.yml", self._rollback_runner(name))
        service = self.services[name] = DemoService(name, NAMESPACE, claim=claims[0] if claims else None)
        service.count(
            versions[-1], service.load_rps * 3600, 0.0
        )  # its pods served an hour before the counters were read

    def _add_service(self, req: Request) -> Response:
        """POST /_sandbox/services {"name": "svc-07"}: one more demo service like api (two
        releases, healthy), for load tests with many services. `reset` removes it again."""
        name = (req.json() or {}).get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", name):
            return Response.json({"message": "give a name: lowercase letters, digits and dashes"}, 422)
        with self._lock:
            if name not in self.services:
                self._seed_service(name, ["v1.4.1", "v1.5.0"])
        return Response.json({"service": name, "url": f"/services/{name}"})

    def _rollback_runner(self, deployment: str):
        def run(repo: str, inputs: dict) -> tuple[bool, list[str]]:
            from integrations.kubernetes import KubernetesClient  # the same client a real workflow would use

            env = inputs.get("environment", "")
            lines = [f"Rollback requested for {deployment} in environment {env or '(none)'}"]
            # the sandbox cluster backs `sandbox` and its variants (sandbox-*); the other names are examples
            if not (env in ("sandbox", "production", "staging") or env.startswith("sandbox-")):
                return False, lines + [f"Error: unknown environment {env!r}"]
            with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as kubeconfig:
                kubeconfig.write(self.kubeconfig_text())
                kubeconfig.flush()
                client = KubernetesClient(kubeconfig.name)
            try:
                return rollback_to_target(client, deployment, inputs, lines)
            finally:
                client.close()
        return run

    def start(self) -> "Sandbox":
        plain = serve(self._app, self.host, self.port)
        secure = serve(self._app, self.host, self.kube_port, tls=server_context(self.cert_pem, self._key_pem))
        self._servers = [plain, secure]
        self.port, self.kube_port = plain.server_address[1], secure.server_address[1]
        self.slack.base_url = self.url  # response_urls point back here
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.kubeconfig.write_text(self.kubeconfig_text())
            self.runbooks_kubeconfig.write_text(self.kubeconfig_text(RUNBOOKS_KUBE_TOKEN))
        threading.Thread(target=self._ticker, name="sandbox-ticker", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _ticker(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            self.cluster.tick()
            self._serve_until_now()

    def _serve_until_now(self) -> None:
        """Count the requests served since the last count, for the time that really passed: on a
        busy machine a tick comes late, and a service serves by the clock (counting nominal ticks
        made a 200 rps load read as 115 rps over a one-second window). `/metrics` counts up to the
        moment it is read too, as a real service's counters are: read between two late ticks, a
        one-second window read 120 rps of a 200 rps load, and a scale-up was sized too small."""
        with self._serving:
            now = time.monotonic()
            elapsed, self._served_at = min(now - self._served_at, 5.0), now
            for svc in list(self.services.values()):  # a snapshot: services are added while it ticks
                svc.tick(self.cluster, elapsed)

    # -- where things are ----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def kube_url(self) -> str:
        return f"https://{self.host}:{self.kube_port}"

    @property
    def kubeconfig(self) -> Path | None:
        return self.state_dir / "kubeconfig" if self.state_dir else None

    @property
    def runbooks_kubeconfig(self) -> Path | None:
        """The runbooks' own kubeconfig: their ServiceAccount's token, held to the shipped Role."""
        return self.state_dir / "runbooks.kubeconfig" if self.state_dir else None

    def issue_token(self, token: str, user: str = RUNBOOKS_USER) -> None:
        """A new token for a user (a rotated projected ServiceAccount token)."""
        self.authorizer.tokens[token] = user

    def revoke_token(self, token: str) -> None:
        self.authorizer.tokens.pop(token, None)

    def use_rbac(self, overlay: str) -> None:
        """Authorize the runbooks against another overlay's Roles (e.g. `read-only`)."""
        self.authorizer.rbac = Rbac.from_manifests(render(overlay))

    @property
    def slack_webhook_url(self) -> str:
        return self.url + SLACK_PATH

    @property
    def security_webhook_url(self) -> str:
        return self.url + SLACK_SECURITY_PATH

    def kubeconfig_text(self, token: str = KUBE_TOKEN) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sandbox",
                "preferences": {},
                "clusters": [
                    {
                        "name": "sandbox",
                        "cluster": {
                            "server": self.kube_url,
                            "certificate-authority-data": base64.b64encode(self.cert_pem).decode(),
                        },
                    }
                ],
                "users": [{"name": "sandbox", "user": {"token": token}}],
                "contexts": [
                    {"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox", "namespace": NAMESPACE}}
                ],
            },
            indent=2,
        )

    # -- HTTP -----------------------------------------------------------------------------
    def _app(self, req: Request) -> Response:
        if req.method != "GET" and req.path.startswith(("/slack", "/github")) and req.body:
            self.received_bodies.append(req.body.decode("utf-8", "replace"))
        target = _target_of(req.path)
        injected = self.faults.check(target, req.path) if target else None
        if injected is not None and injected is not LOST:
            return injected
        resp = self._handle(req)
        return LOST if injected is LOST else resp

    def _handle(self, req: Request) -> Response:
        for handler in (self.kube.handle, self.github.handle, self.slack.handle, self.pagerduty.handle):
            resp = handler(req)
            if resp is not None:
                return resp
        return self.router.dispatch(req) or Response.json({"message": f"no such sandbox path {req.path}"}, 404)

    @property
    def slack_messages(self) -> list[dict]:
        """Every message Slack received, by webhook or Web API (updated in place by chat.update)."""
        return self.slack.messages

    def _clear_slack(self, req: Request) -> Response:
        self.slack.clear()
        return Response.json({"ok": True})

    def _configure_app(self, req: Request) -> Response:
        """POST /_sandbox/slack/app {"interactions_url": ..., "commands_url": ..., "pagerduty_webhook_url":
        ...}: where Slack sends button presses and slash commands, and PagerDuty its webhooks (the intake)."""
        data = req.json() or {}
        self.slack.interactions_url = data.get("interactions_url") or self.slack.interactions_url
        self.slack.commands_url = data.get("commands_url") or self.slack.commands_url
        self.pagerduty.webhook_url = data.get("pagerduty_webhook_url") or self.pagerduty.webhook_url
        return Response.json({"interactions_url": self.slack.interactions_url, "commands_url": self.slack.commands_url,
                              "pagerduty_webhook_url": self.pagerduty.webhook_url})

    def _dependency_health(self, req: Request, name: str) -> Response:
        """GET /dependencies/payments/health: the dependency's own health, down while
        /_sandbox/dependency says so (for any service), whoever calls it."""
        if name != "payments":
            return Response.text("no such dependency", 404)
        if any(svc.dependency_down for svc in self.services.values()):
            return Response.json({"status": "down", "error": "payments is unavailable"}, 503)
        return Response.json({"status": "ok"})

    def _service_endpoint(self, req: Request, name: str, endpoint: str) -> Response:
        svc = self.services.get(name)
        if svc is None:
            return Response.text("no such service", 404)
        if endpoint == "metrics":
            self._serve_until_now()
        return service_endpoint(svc, self.cluster, endpoint, req, self.database_url if name == "api" else None)

    def _set_load(self, req: Request) -> Response:
        data = req.json() or {}
        svc = self.services.get(data.get("service"))
        rps = data.get("rps")
        if svc is None or not isinstance(rps, (int, float)) or rps < 0:
            return Response.json({"message": f"give service (one of {sorted(self.services)}) and rps >= 0"}, 422)
        svc.load_rps = float(rps)
        return Response.json({"service": svc.name, "rps": svc.load_rps})

    def _add_log_lines(self, req: Request) -> Response:
        """POST /_sandbox/logs {"service": "api", "lines": ["..."]}: the service's pods log these
        lines (after their own), as an application that logs what it should not does."""
        data = req.json() or {}
        lines = data.get("lines")
        if data.get("service") not in self.services or not isinstance(lines, list) \
                or not all(isinstance(line, str) for line in lines):
            return Response.json({"message": f"give service (one of {sorted(self.services)}) and lines (strings)"}, 422)
        self.cluster.app_log_lines.setdefault((NAMESPACE, data["service"]), []).extend(lines)
        return Response.json({"service": data["service"], "lines": len(lines)})

    def _set_dependency(self, req: Request) -> Response:
        data = req.json() or {}
        svc = self.services.get(data.get("service"))
        if svc is None or not isinstance(data.get("down"), bool):
            return Response.json({"message": f"give service (one of {sorted(self.services)}) and down true|false"}, 422)
        svc.dependency_down = data["down"]
        return Response.json({"service": svc.name, "dependency_down": svc.dependency_down})

    def _set_latency(self, req: Request) -> Response:
        """POST /_sandbox/latency {"service": "api", "ms": 2500}: every answer of its endpoints
        (but /metrics) comes that much later; 0 ends it."""
        data = req.json() or {}
        svc, ms = self.services.get(data.get("service")), data.get("ms")
        if svc is None or not isinstance(ms, (int, float)) or not 0 <= ms <= 30000:
            return Response.json({"message": f"give service (one of {sorted(self.services)}) and ms 0-30000"}, 422)
        svc.latency_ms = float(ms)
        return Response.json({"service": svc.name, "latency_ms": svc.latency_ms})

    def _set_volume(self, req: Request) -> Response:
        """POST /_sandbox/volume {"service": "api", "used_percent": 98}: how full the service's
        volume claim is (35 % to begin with). From 98 % its writes, 40 % of requests, fail."""
        data = req.json() or {}
        svc, used = self.services.get(data.get("service")), data.get("used_percent")
        if svc is None or svc.claim is None or not isinstance(used, (int, float)) or isinstance(used, bool) \
                or not 0 <= used <= 100:
            claimed = sorted(n for n, s in self.services.items() if s.claim)
            return Response.json({"message": f"give service (one with a volume claim: {claimed}) and used_percent "
                                             "0-100"}, 422)
        svc.volume_used = used / 100
        return Response.json({"service": svc.name, "claim": svc.claim, "used_percent": used})

    def _set_canary(self, req: Request) -> Response:
        """POST /_sandbox/canary {"service": "api", "version": "v1.6.1-errors", "replicas": 1}: a
        canary of that version beside the service's own Deployment (`<service>-canary`, labels
        app=<service> and track=canary), behind the same Service: requests are split by ready
        pods, and `/metrics` counts each version apart. replicas 0 scales the canary to 0."""
        data = req.json() or {}
        svc, version, replicas = self.services.get(data.get("service")), data.get("version"), data.get("replicas", 1)
        if svc is None or not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 10 or (
                replicas and not (isinstance(version, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,60}", version))):
            return Response.json({"message": f"give service (one of {sorted(self.services)}), version and replicas "
                                             "0-10"}, 422)
        name = f"{svc.name}-canary"
        with self.cluster.lock:
            if ("deployments", svc.namespace, name) not in self.cluster._objects:
                if replicas:
                    stable = self.cluster.get("deployments", svc.namespace, svc.name)
                    image = f"{IMAGE.format(name=svc.name)}:{version}"
                    self.cluster.create("deployments", svc.namespace, canary_of(stable, name, image, replicas))
            else:
                patch: dict[str, Any] = {"spec": {"replicas": replicas}}
                if replicas:
                    container = self.cluster.get("deployments", svc.namespace, name)["spec"]["template"]["spec"][
                        "containers"][0]["name"]
                    patch["spec"]["template"] = {"spec": {"containers": [
                        {"name": container, "image": f"{IMAGE.format(name=svc.name)}:{version}"}]}}
                self.cluster.patch("deployments", svc.namespace, name, patch, "application/strategic-merge-patch+json")
            svc.canary = name
        return Response.json({"service": svc.name, "canary": name, "version": version, "replicas": replicas})

    def _served_per_pod(self, namespace: str, deployment: str) -> tuple[float, float] | None:
        """What each ready pod of a demo service serves (rps) and can serve, for the metrics API."""
        svc = self.services.get(deployment)
        ready = self.cluster.ready_pods(namespace, deployment)
        if svc is None or svc.namespace != namespace or not ready:
            return None
        return min(svc.load_rps / ready, svc.capacity_per_replica), svc.capacity_per_replica

    def _set_node(self, req: Request) -> Response:
        """POST /_sandbox/node {"node": "sandbox-node-1", "state": "NotReady"}: the node's kubelet
        stops reporting (NotReady: its pods are marked not Ready, new pods go elsewhere), or it is
        under MemoryPressure or DiskPressure (no new pods), or Ready again."""
        data = req.json() or {}
        names = [n["metadata"]["name"] for n in self.cluster.list("nodes")]
        if data.get("node") not in names or data.get("state") not in NODE_STATES:
            return Response.json({"message": f"give node (one of {names}) and state (one of {list(NODE_STATES)})"},
                                 422)
        pods = self.cluster.set_node_state(data["node"], data["state"])
        return Response.json({"node": data["node"], "state": data["state"], "pods": pods})

    def _set_memory_leak(self, req: Request) -> Response:
        """POST /_sandbox/memory {"service": "api", "oom": true}: the service's pods outgrow their
        memory limit and are OOM-killed in a loop (CrashLoopBackOff, last state OOMKilled, exit
        137), whatever their image and however often they are restarted; false ends it."""
        data = req.json() or {}
        svc = self.services.get(data.get("service"))
        if svc is None or not isinstance(data.get("oom"), bool):
            return Response.json({"message": f"give service (one of {sorted(self.services)}) and oom true|false"}, 422)
        pods = self.cluster.set_memory_leak(svc.namespace, svc.name, data["oom"])
        return Response.json({"service": svc.name, "oom": data["oom"], "pods": pods})

    def _deploy(self, req: Request) -> Response:
        """POST /_sandbox/deploy {"service": "api", "version": "v1.6.0", "ago_seconds": 600}: a
        release through "CI". `ago_seconds` (optional, up to a day) makes it one that went out
        that long ago: its ReplicaSet, commit and deploy run are dated then, and the traffic it
        served since is counted in `/metrics` (clean unless its tag says otherwise)."""
        data = req.json() or {}
        name, version, ago = data.get("service"), data.get("version"), data.get("ago_seconds", 0)
        if name not in self.services or not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,60}",
                                                                                           version):
            return Response.json({"message": "give service (one of %s) and version" % sorted(self.services)}, 422)
        if not isinstance(ago, (int, float)) or not 0 <= ago <= 86400:
            return Response.json({"message": "ago_seconds must be a number of seconds from 0 to 86400"}, 422)
        image = f"{IMAGE.format(name=name)}:{version}"
        at = time.time() - ago
        with self.cluster.lock:
            self.cluster.patch("deployments", NAMESPACE, name,
                               {"spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}}},
                               "application/strategic-merge-patch+json")
            if ago:
                self._backdate(name, version, at, ago)
        self.github.add_commit(f"acme/{name}", f"Release {version}", at=at - 60)
        run = self.github.record_run(f"acme/{name}", "deploy.yml", f"Deploy {version}", "success", at=at,
                                     log=[f"Deploying {image}", "Deployed"])
        return Response.json({"image": image, "run_id": run["id"]})

    def _backdate(self, name: str, version: str, at: float, ago: float) -> None:
        newest = max(self.cluster.replicasets_of(NAMESPACE, name),
                     key=lambda rs: int(rs["metadata"]["annotations"].get(REVISION, "0")))
        stored = self.cluster._objects[("replicasets", NAMESPACE, newest["metadata"]["name"])]
        stored["metadata"]["creationTimestamp"] = now_iso(at)
        svc = self.services[name]
        served = svc.load_rps * ago
        share = 1.0 if version.endswith("-broken") else BAD_REVISION_ERROR_SHARE if "-errors" in version else 0.0
        svc.count(version, served, served * share)

    def _set_fault(self, req: Request) -> Response:
        data: dict[str, Any] = req.json() or {}
        target = data.get("target")
        if target not in ("kubernetes", "github", "slack", "pagerduty", "services"):
            return Response.json({"message": "target must be kubernetes, github, slack, pagerduty or services"}, 422)
        self.faults.set(target, Fault(status=data.get("status"), delay=float(data.get("delay") or 0),
                                      retry_after=data.get("retry_after"), count=data.get("count"),
                                      lose_response=bool(data.get("lose_response")), path=data.get("path")))
        return Response.json({"ok": True})

    def _clear_faults(self, req: Request) -> Response:
        self.faults.clear(req.query.get("target"))
        return Response.json({"ok": True})

    def _reset(self, req: Request) -> Response:
        self.reset()
        return Response.json({"ok": True})


def rollback_to_target(client, deployment: str, inputs: dict, lines: list[str]) -> tuple[bool, list[str]]:
    """The rollback workflow's contract: roll *to* the named target (`to_image`, with
    `to_revision` as where it was), so running it twice is harmless; without a target, undo
    to the previous revision as `kubectl rollout undo` does."""
    from integrations.kubernetes import container_image

    target = inputs.get("to_image")
    if not target:
        result = client.rollout_undo(NAMESPACE, deployment)
        return True, lines + [f"deployment.apps/{deployment} rolled back: revision {result.from_revision} -> "
                              f"{result.to_revision} ({result.image})"]
    current = container_image(client.get_deployment(NAMESPACE, deployment), deployment)
    if current == target:
        return True, lines + [f"deployment.apps/{deployment} already runs {target}: nothing to do"]
    history = client.revision_history(NAMESPACE, deployment)
    match = next((r for r in history if r.image == target), None)
    if match is None:
        return False, lines + [f"Error: no revision of {deployment} runs {target}"]
    result = client.rollout_undo(NAMESPACE, deployment, to_revision=match.revision)
    return True, lines + [f"deployment.apps/{deployment} rolled back to {target}: revision {result.from_revision} -> "
                          f"{result.to_revision}"]


def _target_of(path: str) -> str | None:
    if path.startswith(("/api", "/version")):
        return "kubernetes"
    if path.startswith("/github/"):
        return "github"
    if path.startswith("/slack/"):
        return "slack"
    if path.startswith("/pagerduty/"):
        return "pagerduty"
    if path.startswith("/services/"):
        return "services"
    return None
