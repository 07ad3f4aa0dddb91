"""Reusable Prefect tasks, grouped by capability. Flows compose them; they use integrations/ and incidents/."""
