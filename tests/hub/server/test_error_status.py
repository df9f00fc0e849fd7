"""The HTTP status of each error class, and the client's way back to the same class."""

from __future__ import annotations

import io
import urllib.error
from email.message import Message

import pytest

from hub.remote import raise_for_error
from hub.server.common import error_response
from schemas.errors import AdapterNotFound, IndexDamaged, IndexUnavailable, StoreCorrupted


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AdapterNotFound("no adapter 'team/x'"), 404),
        (IndexUnavailable("the index stayed locked by another process for 60 s"), 503),
        (IndexDamaged("the index is damaged"), 500),
        (StoreCorrupted("blob ab12 does not match its digest"), 500),
    ],
)
def test_server_trouble_is_5xx_and_comes_back_as_the_same_error(error, status):
    response = error_response(error)
    assert response.status_code == status
    headers = Message()
    for key, value in response.headers.items():
        headers[key] = value
    body = io.BytesIO(response.body)
    http_error = urllib.error.HTTPError("http://hub", status, "", headers, body)
    with pytest.raises(type(error), match=str(error)):
        raise_for_error(http_error)
