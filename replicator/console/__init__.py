"""``replicator console``: the review queue as a small web app for the
people who decide parked items.

It makes the same library calls as ``replicator review``
(:class:`replicator.review.ReviewQueue`): a summary of the open items, a
filtered and paged list, an item's sides next to each other with the
decisions (take a side, merge fields, discard), bulk decisions of a filter
after a dry-run preview, and the history. A token admits people (see
:mod:`replicator.console.auth`). The library never imports this package.
"""

from replicator.console.app import create_app

__all__ = ["create_app"]
