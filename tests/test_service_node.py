"""The node's page data: its images per class beside its latest fill's, and the runs it trains for."""

from service_fixtures import FAST, decode, service, wait_for

from regl.service.runs import MAX_RUNS, RunLog


def test_the_node_data_shows_real_beside_the_latest_fill(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, data=str(client_folder)) as api:
        before = api.get("/v1/data", params={"samples": 2}).json()
        assert before["images"] == 10 and before["fill_job"] is None
        assert [(c["name"], c["real"], c["synthetic"]) for c in before["classes"]] == [
            ("cat", 6, None), ("dog", 3, None), ("owl", 1, None)
        ]  # fmt: skip
        assert [len(c["real_samples"]) for c in before["classes"]] == [2, 2, 1]
        assert decode(before["classes"][0]["real_samples"]).shape == (2, 20, 20)  # grayscale PNGs

        job = wait_for(api, api.post("/v1/fill", json={"mode": "noise", "supplement": 1.0, **FAST}).json()["id"])
        after = api.get("/v1/data").json()
        planned = job["result"]["plan"]["counts"]["noise"]
        assert after["fill_job"] == job["id"] and [c["synthetic"] for c in after["classes"]] == planned
        assert [len(c["synthetic_samples"]) for c in after["classes"]] == [min(4, n) for n in planned]

        assert api.get("/v1/data", params={"samples": 17}).status_code == 422


def test_a_service_without_images_says_so(service_base, tmp_path):
    with service(service_base, tmp_path) as api:
        response = api.get("/v1/data")
        assert response.status_code == 409 and "--data" in response.json()["detail"]
        assert api.get("/v1/runs").json() == []


def test_the_run_log_keeps_the_latest_runs_and_the_longest_accuracy_list():
    log = RunLog()
    metrics = {"train-loss": 1.0, "personalized-accuracy": 0.5}
    log.record("a", 5, 3, {"server-round": 2, "global-accuracy": [0.1, 0.2]}, metrics)
    log.record("a", 5, 3, {"server-round": 1}, metrics)  # a late reply of an earlier round: the list stays
    (run,) = log.all()
    assert [r["round"] for r in run["rounds_trained"]] == [2, 1] and run["global_accuracy"] == [0.1, 0.2]
    for i in range(MAX_RUNS):
        log.record(f"run{i}", 5, 3, {"server-round": 1}, metrics)
    names = [run["name"] for run in log.all()]
    assert len(names) == MAX_RUNS and names[0] == f"run{MAX_RUNS - 1}" and "a" not in names
