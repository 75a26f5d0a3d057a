"""The one exception type aelab raises for a user's mistake: its message says what to do."""


class AelabError(Exception):
    """A problem with the user's config, data or files, explained in one paragraph."""
