"""The web board: the ``web`` role (ASGI app over uvicorn) and its static front end.

Runs in: the ``kanband: web`` process only. Nothing else imports this package,
so the supervisor, the other roles and the ``kanban`` client never load
Starlette or uvicorn.
"""
