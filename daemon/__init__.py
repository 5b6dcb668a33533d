"""kanband: the daemon. Everything that may open the board database lives here."""

__version__ = "0.1.0"
