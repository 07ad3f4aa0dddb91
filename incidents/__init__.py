"""The incident domain: configuration, severities and roles, message templates, and the store."""
