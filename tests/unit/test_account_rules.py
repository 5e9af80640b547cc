"""Registration input: emails, display names and passwords, each bad field named."""

from __future__ import annotations

import pytest

from tests.unit.rejection import violations
from ticketd.accounts import rules


def test_emails_are_compared_trimmed_and_lower_case() -> None:
    assert rules.normalize_email("  Alice@Example.COM ") == "alice@example.com"


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("", "is required"),
        ("   ", "is required"),
        ("alice", "is not an email address"),
        ("alice@example", "is not an email address"),
        ("a@b@example.com", "is not an email address"),
        ("al ice@example.com", "is not an email address"),
        ("alice@exa\x00mple.com", "must not contain invisible or control characters (U+0000)"),
        ("a" * 250 + "@x.io", f"must be at most {rules.MAX_EMAIL_CHARS} characters"),
    ],
    ids=repr,
)
def test_bad_emails(email: str, why: str) -> None:
    violation = rules.email_violation(email, field="user.email")
    assert violation is not None
    assert (violation.field, violation.description) == ("user.email", why)


@pytest.mark.parametrize("email", ["a@b.co", " Bob.Smith+tickets@mail.example.org ", "ü@例え.jp"])
def test_good_emails(email: str) -> None:
    assert rules.email_violation(email) is None


def test_display_names_are_normalized_and_checked() -> None:
    assert rules.clean_display_name("  Cafe\u0301 ") == "Caf\u00e9"  # NFC, trimmed
    assert rules.display_name_violation("Zoë") is None
    for name, why in [
        ("  ", "is required"),
        ("x" * (rules.MAX_DISPLAY_NAME_CHARS + 1), "must be at most 100 characters"),
        ("tab\there", "must not contain control, invisible or bidirectional characters (U+0009)"),
    ]:
        violation = rules.display_name_violation(name)
        assert violation is not None and violation.description == why


def test_registration_reports_every_bad_field_at_once() -> None:
    assert violations(lambda: rules.validate_registration("nope", "short", "")) == [
        ("email", "is not an email address"),
        ("password", "must be at least 8 bytes"),
        ("display_name", "is required"),
    ]


def test_password_length_is_counted_in_bytes() -> None:
    rules.validate_registration("a@b.co", "é" * 4, "A")  # 8 bytes, 4 characters
    rules.validate_registration("a@b.co", "x" * 72, "A")
    assert violations(lambda: rules.validate_registration("a@b.co", "é" * 37, "A")) == [
        ("password", "must be at most 72 bytes (bcrypt's limit)")
    ]
