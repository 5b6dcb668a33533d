"""The ``kanban`` client: stdlib only, talks to kanband over its Unix socket."""
