"""The board kernel: schema, migrations, the transition table and operations.

Pure functions over a SQLite connection; the dispatcher is their only writer.
"""
