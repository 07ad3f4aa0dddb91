"""How runs start: the local stack (`make up` / `make down`) and, later, alert intake and drills."""
