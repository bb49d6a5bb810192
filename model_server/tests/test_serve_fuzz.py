"""Fuzzing API v1 from its exported OpenAPI schema (schemathesis) against a live server: no input
may produce a server error, every reply must match the schema, and requests without the API
key must be refused. Half of the generated requests aim at a real session so that clicks, masks
and undo reach the engine."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
import zlib
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from server_helpers import running_server

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"

schema = schemathesis.openapi.from_path(OPENAPI_PATH)
SHAPE = (8, 24, 24)
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def live(tiny_model) -> tuple[str, str]:
    """(base URL, id of a session holding a small volume)."""
    model = tiny_model
    # the fuzzer probes every path without the key many times a minute: no 401 rate limit here
    with running_server("--model", str(model), "--api-key", KEY, "--max-sessions", "1000",
                        "--max-voxels", "2000000", "--auth-failures-per-minute", "1000000") as url:
        array = np.random.default_rng(0).normal(0, 30, SHAPE).astype(np.int16)
        reply = requests.post(f"{url}/v1/sessions", data=zlib.compress(array.tobytes()), headers=AUTH,
                              params={"shape": "8,24,24", "dtype": "int16", "spacing": "2,1,1"})
        yield url, reply.json()["session_id"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_makes_a_server_error(case, live):
    url, session_id = live
    path = case.path_parameters or {}
    excluded = [positive_data_acceptance]
    if "session_id" in path:
        if case.method == "DELETE":  # keep the shared session alive for the other operations
            path["session_id"] = "fuzz-" + str(path["session_id"])
        elif random.Random(repr(case.body)).random() < 0.5:
            path["session_id"] = session_id
            # a generated invalid id (or missing key) replaced by a real one (and the key) makes a
            # negative case valid: its acceptance is no failure
            excluded.append(negative_data_rejection)
    # Not checked: that every schema-valid request succeeds. A point outside the volume or mask
    # bits that do not fill their box are schema-valid and must be refused (400).
    case.call_and_validate(base_url=url, headers=AUTH, excluded_checks=excluded)
