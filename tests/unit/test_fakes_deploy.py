"""The fake deploy service's state machine, through HTTP: queued -> building -> ready, error or
canceled on request, cancel, idempotent creates, validation, auth and faults."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shiftflow.fakes.deploy import FakeClock, FakeDeploy, FakeDeployServer, Timings


@pytest.fixture
def deploy() -> Iterator[tuple[FakeDeploy, httpx.Client]]:
    fake = FakeDeploy(clock=FakeClock(), timings=Timings(queued=2, building=5), token="tok")
    with FakeDeployServer(fake) as server, httpx.Client(
        base_url=server.base_url, headers={"authorization": "Bearer tok"}, timeout=10
    ) as http:
        yield fake, http


def create(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/deployments", json={"project": "web", "ref": "abc123", **body})


def test_a_deployment_moves_queued_building_ready(deploy):
    fake, http = deploy
    made = create(http, environment="staging", metadata={"commit": "abc123"})
    assert made.status_code == 201
    dep = made.json()
    assert dep["status"] == "queued" and dep["url"] is None and dep["environment"] == "staging"
    assert dep["id"] == "dep_000001" and dep["metadata"] == {"commit": "abc123"}
    fake.advance(2)
    assert http.get(f"/deployments/{dep['id']}").json()["status"] == "building"
    fake.advance(4.9)
    assert http.get(f"/deployments/{dep['id']}").json()["status"] == "building"
    fake.advance(0.1)
    ready = http.get(f"/deployments/{dep['id']}").json()
    assert ready["status"] == "ready" and ready["url"].startswith("https://web-dep-000001")
    assert [e["status"] for e in ready["events"]] == ["queued", "building", "ready"]
    assert ready["updated_at"] == ready["events"][-1]["at"] and ready["error"] is None


@pytest.mark.parametrize("outcome", ["error", "canceled"])
def test_error_or_canceled_on_request(deploy, outcome):
    fake, http = deploy
    dep = create(http, metadata={"fake_outcome": outcome}).json()
    fake.advance(7)
    ended = http.get(f"/deployments/{dep['id']}").json()
    assert ended["status"] == outcome
    assert [e["status"] for e in ended["events"]] == ["queued", "building", outcome]
    assert (ended["error"] is not None) == (outcome == "error") and ended["url"] is None


def test_next_outcome_from_the_test(deploy):
    fake, http = deploy
    fake.next_outcome("error")
    first = create(http).json()
    fake.advance(7)
    assert http.get(f"/deployments/{first['id']}").json()["status"] == "error"
    with pytest.raises(ValueError, match="outcome"):
        fake.next_outcome("exploded")


def test_cancel_while_building_and_not_after_the_end(deploy):
    fake, http = deploy
    dep = create(http).json()
    fake.advance(3)
    canceled = http.post(f"/deployments/{dep['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    fake.advance(10)  # the build would have ended: it stays canceled
    after = http.get(f"/deployments/{dep['id']}").json()
    assert after["status"] == "canceled"
    assert [e["status"] for e in after["events"]] == ["queued", "building", "canceled"]
    again = http.post(f"/deployments/{dep['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancelable"
    other = create(http, ref="def456").json()
    fake.advance(7)
    late = http.post(f"/deployments/{other['id']}/cancel")
    assert late.status_code == 409 and "is ready" in late.json()["error"]["message"]


def test_cancel_while_queued(deploy):
    fake, http = deploy
    dep = create(http).json()
    assert http.post(f"/deployments/{dep['id']}/cancel").json()["status"] == "canceled"
    fake.advance(10)
    events = http.get(f"/deployments/{dep['id']}").json()["events"]
    assert [e["status"] for e in events] == ["queued", "canceled"]


def test_an_idempotency_key_never_starts_a_second_deployment(deploy):
    fake, http = deploy
    first = http.post("/deployments", json={"project": "web", "ref": "a"}, headers={"idempotency-key": "k1"})
    replay = http.post("/deployments", json={"project": "web", "ref": "a"}, headers={"idempotency-key": "k1"})
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["id"] == first.json()["id"]
    reused = http.post("/deployments", json={"project": "web", "ref": "b"}, headers={"idempotency-key": "k1"})
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake.deployments) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ref": "a"}, "project"),
        ({"project": "Web Site", "ref": "a"}, "project"),
        ({"project": "web"}, "ref"),
        ({"project": "web", "ref": "a", "environment": ""}, "environment"),
        ({"project": "web", "ref": "a", "metadata": []}, "metadata"),
        ({"project": "web", "ref": "a", "metadata": {"fake_outcome": "boom"}}, "metadata.fake_outcome"),
        ({"project": "web", "ref": "a", "branch": "main"}, "branch"),
    ],
)
def test_bad_creates_name_the_field(deploy, body, field):
    fake, http = deploy
    answer = http.post("/deployments", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["field"] == field
    assert fake.deployments == {}


def test_auth_unknown_ids_listing_and_faults(deploy):
    fake, http = deploy
    assert http.get("/deployments/dep_000001", headers={"authorization": "Bearer nope"}).status_code == 401
    assert http.get("/deployments/dep_999999").status_code == 404
    create(http, project="api")
    create(http, project="web")
    listed = http.get("/deployments", params={"project": "web"}).json()["deployments"]
    assert [d["project"] for d in listed] == ["web"]
    assert len(http.get("/deployments").json()["deployments"]) == 2
    fake.fail_next(429, retry_after=3)
    limited = http.get("/deployments")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert http.get("/deployments").status_code == 200
    assert [r.status for r in fake.requests][-2:] == [429, 200]


def test_controls_over_http_on_a_fake_clock():
    fake = FakeDeploy(timings=Timings(1, 1))
    with FakeDeployServer(fake) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        dep = http.post("/v1/deployments", json={"project": "web", "ref": "a"}).json()
        assert http.post("/_fake/outcome", json={"outcome": "error"}).status_code == 200
        assert http.post("/_fake/advance", json={"seconds": 5}).status_code == 200
        assert http.get(f"/v1/deployments/{dep['id']}").json()["status"] == "ready"
        second = http.post("/v1/deployments", json={"project": "web", "ref": "b"}).json()
        http.post("/_fake/advance", json={"seconds": 5})
        assert http.get(f"/v1/deployments/{second['id']}").json()["status"] == "error"
        assert http.post("/_fake/outcome", json={"outcome": "nope"}).status_code == 400
        assert [r["status"] for r in http.get("/_fake/requests").json()] == [201, 200, 201, 200]
