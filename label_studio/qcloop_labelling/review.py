"""Which annotations count as reviewed when ``label_studio.review`` is on.

Label Studio Community has no review workflow; its nearest is the ground-truth star,
which any member may set on any annotation, their own included. What the server
records that a member cannot forge is an annotation's ``updated_by``: every write
through the API (create, edit, star) sets it to the user who made the request,
whatever the request says. ``completed_by`` is no proof of authorship: the API lets a
member create an annotation in another user's name. Community keeps no history of
who starred what (``last_action`` and ``last_created_by`` stay empty there).

With ``label_studio.reviewers`` (emails) an annotation is *reviewed* when

- it carries the star and a listed reviewer wrote it last (the star, or an edit while
  it was starred): a labeller's star on their own work does not count, and a change
  by anyone else after the reviewer's star sends it back to pending until a reviewer
  stars it again;
- a listed reviewer created it and nobody changed it since (``completed_by`` and
  ``updated_by`` the same reviewer): a reviewer's own annotations count as reviewed;
- (Label Studio Enterprise) the latest review by a listed reviewer accepts it.

Without reviewers every star and every accepted review counts, whoever gave it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import LabellingError

log = logging.getLogger(__name__)

REVIEW_RULE = (
    "review on: an annotation counts when a listed reviewer starred it as ground truth and "
    "wrote it last, when a listed reviewer created it and nobody changed it since, or when "
    "the latest review by a listed reviewer accepts it (Enterprise); without reviewers any "
    "star or accepted review counts"
)
OPEN_REVIEW_WARNING = (
    "label_studio.review is on without label_studio.reviewers: anyone's ground-truth star "
    "counts, a labeller's star on their own work included; list the reviewers' emails"
)


@dataclass(frozen=True)
class Reviewers:
    """The Label Studio users whose review counts: their ids and emails (lower case)."""

    ids: frozenset[int]
    emails: frozenset[str]

    def listed(self, user: Any) -> bool:
        """Whether ``user`` (an id, an email or a ``{"id", "email"}`` object) is listed."""
        if isinstance(user, dict):
            return self.listed(user.get("id")) or self.listed(user.get("email"))
        if isinstance(user, bool):
            return False
        if isinstance(user, int):
            return user in self.ids
        return isinstance(user, str) and user.strip().lower() in self.emails


def _user_id(user: Any) -> Any:
    """A user as an export names it (an id, or an expanded ``{"id", ...}``) -> its id."""
    return user.get("id") if isinstance(user, dict) else user


def _reviews(annotation: dict[str, Any]) -> list[dict[str, Any]]:
    reviews = annotation.get("reviews") or annotation.get("review_result") or []
    reviews = reviews if isinstance(reviews, list) else [reviews]
    return [r for r in reviews if isinstance(r, dict)]


def _latest_listed_review(
    annotation: dict[str, Any], reviewers: Reviewers
) -> dict[str, Any] | None:
    listed = [r for r in _reviews(annotation) if reviewers.listed(r.get("created_by"))]
    if not listed:
        return None
    return max(listed, key=lambda r: (str(r.get("created_at") or ""), int(r.get("id") or 0)))


def reviewed(annotation: dict[str, Any], reviewers: Reviewers | None = None) -> bool:
    """Whether ``annotation`` counts as reviewed (see the module's rule).

    ``reviewers`` None: any ground-truth star or accepted review counts.
    """
    if reviewers is None:
        return bool(annotation.get("ground_truth")) or any(
            r.get("accepted") for r in _reviews(annotation)
        )
    last_writer = _user_id(annotation.get("updated_by"))
    author = _user_id(annotation.get("completed_by"))
    if annotation.get("ground_truth") and reviewers.listed(last_writer):
        return True
    if author is not None and author == last_writer and reviewers.listed(author):
        return True
    review = _latest_listed_review(annotation, reviewers)
    return bool(review and review.get("accepted"))


def user_emails(client: LabelStudioClient) -> dict[int, str]:
    """Every user of the token's organisation in Label Studio: id -> email."""
    return {int(u["id"]): str(u.get("email") or "") for u in client.users() if "id" in u}


def resolve_reviewers(client: LabelStudioClient, emails: list[str]) -> Reviewers:
    """The listed reviewers as Label Studio users; an email it does not know is an error."""
    wanted = {e.strip().lower() for e in emails if e.strip()}
    known = {email.lower(): uid for uid, email in user_emails(client).items() if email}
    unknown = sorted(wanted - known.keys())
    if unknown:
        some = sorted(known)[:10]
        users = ", ".join(some) + (", ..." if len(known) > len(some) else "")
        raise LabellingError(
            f"label_studio.reviewers: {', '.join(unknown)} is not a user of Label Studio at "
            f"{client.url} (its users: {users or 'none'}); fix the email in qcloop.toml or "
            "QCLOOP_LABEL_STUDIO__REVIEWERS, or invite the reviewer to Label Studio"
        )
    return Reviewers(frozenset(known[e] for e in wanted), frozenset(wanted))
