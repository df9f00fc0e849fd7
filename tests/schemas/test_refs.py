import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import AdapterRef, InvalidName, validate_alias, validate_repo_id

PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda p: ".." not in p
)
VALID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@given(PART, PART)
def test_valid_ids_round_trip(namespace, name):
    ref = AdapterRef.parse(f"{namespace}/{name}")
    assert (ref.namespace, ref.name, ref.revision) == (namespace, name, None)
    assert ref.revision_kind == "latest"
    assert str(ref) == f"{namespace}/{name}"


@given(PART, PART, st.integers(min_value=1, max_value=10**6))
def test_version_revisions(namespace, name, number):
    ref = AdapterRef.parse(f"{namespace}/{name}@v{number}")
    assert ref.revision_kind == "version"
    assert ref.version == number


@given(PART, PART, st.from_regex(r"[0-9a-f]{7,40}", fullmatch=True))
def test_commit_revisions(namespace, name, commit):
    ref = AdapterRef.parse(f"{namespace}/{name}@{commit}")
    assert ref.revision_kind == "commit"
    assert ref.revision == commit


@given(st.text(max_size=40))
def test_parse_accepts_exactly_the_grammar(text):
    repo, _, _ = text.partition("@")
    parts = repo.split("/")
    grammar_ok = len(parts) == 2 and all(VALID_PART.fullmatch(p) and ".." not in p for p in parts)
    try:
        AdapterRef.parse(text)
    except InvalidName as error:
        assert str(error).startswith(("invalid repository id", "invalid reference"))
        if grammar_ok:
            # Only the revision part can be at fault then.
            assert "revision" in str(error)
    else:
        assert grammar_ok


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("../x", "invalid repository id '../x': the namespace contains '..'"),
        ("a/..", "invalid repository id 'a/..': the name contains '..'"),
        ("a/", "invalid repository id 'a/': the name is empty"),
        ("/b", "invalid repository id '/b': the namespace is empty"),
        ("a/b/c", "invalid repository id 'a/b/c': expected 'namespace/name'"),
        ("ab", "invalid repository id 'ab': expected 'namespace/name'"),
        (
            "a/-b",
            "invalid repository id 'a/-b': the name '-b' must start with a letter or digit and"
            " use only letters, digits, '.', '_' and '-' (at most 96 characters)",
        ),
        (
            "a/b c",
            "invalid repository id 'a/b c': the name 'b c' must start with a letter or digit and"
            " use only letters, digits, '.', '_' and '-' (at most 96 characters)",
        ),
        ("a/b@", "invalid reference 'a/b@': empty revision after '@'"),
        (
            "a/b@x/y",
            "invalid reference 'a/b@x/y': revision 'x/y' is not 'main', a version (v3),"
            " an alias or a commit id (7 to 40 hex)",
        ),
    ],
)
def test_invalid_references(text, message):
    with pytest.raises(InvalidName) as info:
        AdapterRef.parse(text)
    assert str(info.value) == message


def test_revision_kinds():
    assert AdapterRef.parse("a/b@main").revision_kind == "latest"
    assert AdapterRef.parse("a/b@prod").revision_kind == "alias"
    assert AdapterRef.parse("a/b@abc1234").revision_kind == "commit"
    assert validate_repo_id("team/sql-lora.v2") == "team/sql-lora.v2"


@pytest.mark.parametrize("alias", ["main", "v3", "v0", "abcdef1", "a/b", "-x", "x..y"])
def test_aliases_that_would_shadow_or_escape_are_refused(alias):
    with pytest.raises(InvalidName):
        validate_alias(alias)


def test_long_name_limit():
    assert validate_repo_id("a/" + "x" * 96)
    with pytest.raises(InvalidName):
        validate_repo_id("a/" + "x" * 97)
