"""Slack interactivity benchmark: Slack wants a 200 within 3 s for every button press and
every slash command.

200 signed block_actions presses (16 in flight) go to an intake of its own; each names an
approval request that does not exist, so each is verified, acknowledged, looked up in the
incident store and answered through its response_url with an ephemeral reply, as a refused
press is. With --commands, 200 signed `/incident status <id>` commands for incidents that do
not exist go to /slack/commands instead: each is verified, answered "⏳" at once, looked up in
the store and answered through its response_url. Prints the acknowledgement time (median, p99,
max; target p99 < 3 s, the point being far less), the time until the reply reached Slack
(median, p99), and errors seen. Needs PostgreSQL and Redis; no Prefect server (neither a
refused press nor a status command starts or resumes a run).

    .venv/bin/python benchmarks/slack_interactions.py [--presses 200] [--commands]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET = secrets.token_urlsafe(24)
os.environ["RUNBOOKS_SLACK_SIGNING_SECRET"] = SECRET

from alert_intake import _free_port, _percentile  # noqa: E402 - the benchmarks' shared helpers (same folder)


def _start_intake(port: int) -> None:
    import uvicorn

    from deployments.intake import IntakeSettings, create_app

    settings = IntakeSettings(token=secrets.token_urlsafe(16), routes=[], redis_url="redis://127.0.0.1:6379/12",
                              prefect_api_url="http://127.0.0.1:9/api", known_services={})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)


async def _press(client: httpx.AsyncClient, url: str, body: str) -> float:
    timestamp = str(int(time.time()))
    from sandbox.slack import sign

    started = time.perf_counter()
    answer = await client.post(url, content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": sign(SECRET, timestamp, body.encode())})
    answer.raise_for_status()
    return time.perf_counter() - started


async def _run(url: str, bodies: list[str], in_flight: int) -> tuple[list[float], int]:
    limit = asyncio.Semaphore(in_flight)
    errors = 0

    async def one(client: httpx.AsyncClient, body: str) -> float | None:
        nonlocal errors
        async with limit:
            try:
                return await _press(client, url, body)
            except httpx.HTTPError:
                errors += 1
                return None

    async with httpx.AsyncClient(timeout=10) as client:
        times = await asyncio.gather(*(one(client, b) for b in bodies))
    return [t for t in times if t is not None], errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--commands", action="store_true", help="/incident status commands instead of presses")
    args = parser.parse_args()
    from sandbox.world import Sandbox

    world = Sandbox().start()
    port = _free_port()
    _start_intake(port)
    bodies = []
    for n in range(args.presses):
        if args.commands:
            bodies.append(urlencode(world.slack.command_form("U0SANDOLA", f"status {900_000_000 + n}")))
            continue
        message = {"channel": "C0SANDINC", "ts": f"{time.time():.6f}", "thread_ts": None, "text": "APPROVAL NEEDED",
                   "blocks": []}
        button = {"action_id": "runbooks_approve", "block_id": "runbooks_actions", "value": secrets.token_urlsafe(18),
                  "text": {"type": "plain_text", "text": "Approve"}}
        payload = world.slack.payload("U0SANDMAL", message, button)
        bodies.append(urlencode({"payload": json.dumps(payload)}))
    path = "/slack/commands" if args.commands else "/slack/interactions"
    started = time.perf_counter()
    acks, errors = asyncio.run(_run(f"http://127.0.0.1:{port}{path}", bodies, args.in_flight))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len([m for m in world.slack_messages if m.get("ephemeral")]) < args.presses:
        time.sleep(0.05)
    replies = [m for m in world.slack_messages if m.get("ephemeral")]
    reply_times = sorted(m["received_at"] for m in replies)
    wall = time.perf_counter() - started
    what = "/incident status commands" if args.commands else "presses"
    print(f"{what}: {args.presses}, {args.in_flight} in flight, errors seen: {errors}")
    print(f"acknowledged (HTTP 200): median {statistics.median(acks) * 1000:.1f} ms, "
          f"p99 {_percentile(acks, 0.99) * 1000:.1f} ms, max {max(acks) * 1000:.1f} ms (Slack's limit: 3000 ms)")
    print(f"ephemeral replies received: {len(replies)} of {args.presses}; all within {wall:.1f} s of the first press")
    if reply_times:
        first = reply_times[0]
        gaps = [t - first for t in reply_times]
        print(
            f"reply arrival after the first: median {statistics.median(gaps):.2f} s, "
            f"p99 {_percentile(gaps, 0.99):.2f} s"
        )
    world.stop()


if __name__ == "__main__":
    main()
