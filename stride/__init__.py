"""The all-in-one runner and the ``stride`` command line."""

__all__: list[str] = []
