"""The docs are held to the code: the README stays a first ten minutes and links every page;
every link lands; each page names what the code has (every module, every fault of the catalog,
every CLI command, every Slack verb, every benchmark, every environment variable the runbooks
read) and states the fault matrix's size as the matrix has it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text(*names: str) -> str:
    return "\n".join((ROOT / name).read_text() for name in names)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_the_readme_is_a_first_ten_minutes_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220, "the README grows: move the detail to a page in docs/"
    assert "make up" in readme and "make test" in readme
    linked = {target for target in LINK.findall(readme) if target.startswith("docs/")}
    assert {f"docs/{page.name}" for page in PAGES} <= {t.split("#")[0] for t in linked}


def test_every_link_of_the_readme_and_the_docs_lands():
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            landing = (page.parent / path).resolve() if path else page
            if not landing.exists() or (anchor and landing.suffix == ".md" and anchor not in _anchors(landing)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_architecture_page_names_every_module():
    """docs/architecture.md is where a newcomer looks for a module's home: a module added without
    a line there fails here."""
    page = (DOCS / "architecture.md").read_text()
    layout = page[page.index("flows/          one module per flow"):page.index("**The sandbox.**")]
    packages = ["flows", "tasks", "incidents", "integrations", "deployments", "devstack"]
    unnamed = [f"{package}/{path.name}" for package in packages for path in sorted((ROOT / package).glob("*.py"))
               if path.name != "__init__.py" and path.stem not in layout]
    assert not unnamed, f"not in docs/architecture.md's layout: {unnamed}"


def test_the_judgement_page_lists_the_fault_catalog_as_it_is():
    from incidents.drills import CATALOG

    page = (DOCS / "judgement.md").read_text()
    catalog = page[page.index("## Fault catalog"):page.index("## Held-out faults")]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", catalog, flags=re.MULTILINE))
    assert listed == set(CATALOG), (sorted(set(CATALOG) - listed), sorted(listed - set(CATALOG)))


def test_the_testing_page_gives_the_fault_matrix_its_real_size():
    from tests.test_fault_matrix import MODES, PHASES

    cells = sum(len(modes) for modes in MODES.values()) * len(PHASES)
    page = (DOCS / "testing.md").read_text()
    stated = {int(n) for n in re.findall(r"(\d+) cells\b", page)} | {int(n) for n in re.findall(r"N/(\d+)", page)}
    assert stated == {cells}, f"the matrix has {cells} cells; the page says {sorted(stated)}"


def test_every_cli_command_and_slack_verb_is_documented():
    from deployments.cli import parser
    from deployments.slack_commands import LEAD_VERBS, MEMBER_VERBS

    subcommands = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    operator_docs = _text("README.md", "docs/operations.md", "docs/approvals.md", "docs/alerts.md",
                          "docs/judgement.md", "docs/install.md", "docs/slack-and-pagerduty.md")
    missing = sorted(c for c in subcommands.choices if f"runbooks {c}" not in operator_docs)
    assert not missing, f"runbooks commands no page shows: {missing}"
    slack = (DOCS / "slack-and-pagerduty.md").read_text()
    assert not sorted(v for v in MEMBER_VERBS | LEAD_VERBS if f"/incident {v}" not in slack)


def test_every_benchmark_script_is_on_the_benchmarks_page():
    page = (DOCS / "benchmarks.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py")
    assert not [s for s in scripts if s not in page], scripts


def test_every_setting_the_runbooks_read_from_the_environment_is_documented():
    code = "\n".join(p.read_text() for package in ("flows", "tasks", "incidents", "integrations", "deployments")
                     for p in (ROOT / package).glob("*.py"))
    read = set(re.findall(r"\b(RUNBOOKS_[A-Z][A-Z0-9_]*[A-Z0-9])\b", code)) - {"RUNBOOKS_SECRET_"}
    docs = _text("README.md", *(str(p.relative_to(ROOT)) for p in PAGES))
    missing = sorted(name for name in read if name not in docs)
    assert not missing, f"settings no page mentions: {missing}"
