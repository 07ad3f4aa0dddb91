"""One module per flow. A flow reads like the playbook section it automates."""
