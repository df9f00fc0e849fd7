"""One table between HubError kinds and HTTP: every kind has a row, and every kind the server
answers with (native and Hugging Face bodies) comes back to the client as the same kind."""

from __future__ import annotations

import io
import urllib.error
from email.message import Message

import pytest
from starlette.responses import JSONResponse

import schemas.errors
from hub.errors_http import HTTP, error_from_http, status_of
from hub.remote import raise_for_error
from hub.server.common import error_response, hf_error_response
from schemas.errors import AuthError, HubError, InvalidArgument, InvalidName, RevisionNotFound


def _kinds(cls: type[HubError] = HubError) -> list[type[HubError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _kinds(sub)
    return found


# Every kind defined in schemas.errors: a new one without a row fails here.
KINDS = [k for k in _kinds() if k.__module__ == schemas.errors.__name__]


def _as_http_error(response: JSONResponse) -> urllib.error.HTTPError:
    headers = Message()
    for key, value in response.headers.items():
        headers[key] = value
    return urllib.error.HTTPError(
        "http://hub", response.status_code, "", headers, io.BytesIO(bytes(response.body))
    )


def test_every_kind_has_one_row_and_one_code():
    assert set(HTTP) == set(KINDS)
    assert len({kind.code for kind in HTTP}) == len(HTTP)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("hf", [False, True], ids=["native", "hf-body"])
def test_every_kind_round_trips(kind, hf):
    error = kind(f"{kind.__name__} happened: 'team/x'")
    response = error_response(error, hf=hf)
    assert response.status_code == HTTP[kind].status
    with pytest.raises(HubError) as raised:
        raise_for_error(_as_http_error(response))
    back = raised.value
    assert type(back) is kind
    assert str(back) == f"{kind.__name__} happened: 'team/x'"
    assert status_of(back) == HTTP[kind].status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("upload over 10 bytes", status=413), 413),
        (AuthError("token 'ci' may not write to namespace 'team'", status=403), 403),
        (InvalidArgument("team/x moved on", status=412), 412),
    ],
)
def test_a_status_the_error_names_comes_back_with_it(error, status):
    with pytest.raises(type(error)) as raised:
        raise_for_error(_as_http_error(error_response(error)))
    assert status_of(raised.value) == status
    assert raised.value.context == {"status": status}


def test_hf_routes_send_the_codes_huggingface_hub_reads_and_they_come_back():
    missing = hf_error_response(schemas.errors.AdapterNotFound("no adapter 'team/x'"))
    assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "RepoNotFound")
    with pytest.raises(schemas.errors.AdapterNotFound, match="no adapter 'team/x'"):
        raise_for_error(_as_http_error(missing))

    malformed = hf_error_response(InvalidName("invalid repository id 'a/../b'"))
    assert (malformed.status_code, malformed.headers["X-Error-Code"]) == (404, "RepoNotFound")

    entry = hf_error_response(RevisionNotFound("team/x@v1 has no file 'a'"), "EntryNotFound")
    assert (entry.status_code, entry.headers["X-Error-Code"]) == (404, "EntryNotFound")

    plain = hf_error_response(InvalidArgument("commits go to 'main'"))
    assert plain.status_code == 400 and "X-Error-Code" not in plain.headers


def test_an_answer_that_is_no_error_body_is_a_plain_hub_error_quoting_it():
    error = error_from_http(502, {}, b"<html>Bad Gateway</html>")
    assert type(error) is HubError
    assert str(error) == "server answered 502: b'<html>Bad Gateway</html>'"
