"""``hf-adapt serve`` for classifiers, over real HTTP on 127.0.0.1: predictions that match ``load_adapted``,
micro-batching, feedback keyed by id into the log ``hf-adapt feedback`` reads, restarts, privacy, keys and limits."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.feedback.convert import corrections_to_experience  # noqa: E402
from hf_adapt.feedback.log import read_feedback  # noqa: E402
from hf_adapt.predict import load_adapted  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.serve.helpers import call, running  # noqa: E402


@pytest.fixture(scope="module")
def credit_output(tiny_bert, credit_sample, tmp_path_factory):
    """LoRA on the tiny BERT over German Credit rows (the quickstart's template), with an operating point."""
    return train_finetune(tmp_path_factory.mktemp("serve_credit") / "out", model_name_or_path=str(tiny_bert),
                  data=str(credit_sample), operating_point="sensitivity", operating_target=0.9)


@pytest.fixture(scope="module")
def credit_rows(credit_sample) -> list[dict]:
    frame = pd.read_csv(credit_sample).drop(columns=["creditability"], errors="ignore")
    return json.loads(frame.head(40).to_json(orient="records"))


@pytest.fixture(scope="module")
def served_credit(credit_output):
    return load_served(str(credit_output), None, False, "cpu")


def _server(served, tmp_path, api_key=None, **values) -> Server:
    cfg = ServeConfig(model=str(served.directory), feedback_log=str(tmp_path / "feedback" / "served.jsonl"), **values)
    return Server(cfg, served, api_key=api_key)


def _predict(url, inputs, **extra):
    return call(f"{url}/v1/predict", {"inputs": inputs, **extra})


def test_predictions_match_load_adapted_and_name_the_version(served_credit, credit_output, credit_rows, tmp_path):
    expected = load_adapted(str(credit_output)).predict_proba(credit_rows[:8])
    with running(create_app(_server(served_credit, tmp_path))) as url:
        status, body, _ = _predict(url, credit_rows[:8])
        single_status, single, _ = call(f"{url}/v1/predict", {"input": credit_rows[0]})
        _, ready, _ = call(f"{url}/ready")
    assert status == 200 and single_status == 200
    assert body["revision"] == served_credit.revision == ready["revision"] and body["revision"].startswith("local-")
    labels = served_credit.model.labels
    got = np.array([[p["probabilities"][name] for name in labels] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    point = served_credit.info["operating_point"]
    for prediction in body["predictions"]:
        decision = prediction["decision"]
        assert decision["threshold"] == point["threshold"] and decision["rule"] == "sensitivity"
        positive = prediction["probabilities"][point["positive_label"]] >= point["threshold"]
        assert decision["positive"] == positive
        assert prediction["label"] == (point["positive_label"] if positive else point["negative_label"])
    ids = [p["prediction_id"] for p in body["predictions"]] + [single["predictions"][0]["prediction_id"]]
    assert len(set(ids)) == 9
    answers = [json.loads(line) for line in (tmp_path / "feedback" / ".answers" / "served.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == ids and answers[0]["input"] == credit_rows[0]


def test_concurrent_requests_share_forward_passes(served_credit, credit_rows, tmp_path):
    server = _server(served_credit, tmp_path, max_batch_size=16, max_wait_ms=50)
    with running(create_app(server)) as url, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda row: _predict(url, [row]), credit_rows[:16]))
        _, metrics, _ = call(f"{url}/metrics")
    assert all(status == 200 for status, _, _ in results)
    expected = served_credit.model.predict_proba(credit_rows[:16])
    got = np.array([[body["predictions"][0]["probabilities"][n] for n in served_credit.model.labels]
                    for _, body, _ in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # batched with others, each row's answer is its own
    count = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("hf_adapt_batch_size_count"))
    assert count < 16, f"16 concurrent one-row requests ran as {count:.0f} forward passes: nothing was batched"


def test_feedback_by_id_lands_in_the_log_the_feedback_recipe_reads(served_credit, credit_rows, tmp_path):
    log = tmp_path / "feedback" / "served.jsonl"
    with running(create_app(_server(served_credit, tmp_path))) as url:
        _, body, _ = _predict(url, credit_rows[:3])
        first, second, third = (p["prediction_id"] for p in body["predictions"])
        label = body["predictions"][1]["label"]
        other = next(n for n in served_credit.model.labels if n != label)
        assert call(f"{url}/v1/feedback", {"id": first, "feedback": "up", "user_id": "alice"})[0] == 201
        assert call(f"{url}/v1/feedback", {"id": second, "correction": other})[0] == 201
        assert call(f"{url}/v1/feedback", {"id": third, "feedback": 0.25, "metadata": {"ward": "7"}})[0] == 201
        before = log.read_bytes()
        refused = [call(f"{url}/v1/feedback", bad) for bad in (
            {"id": "pred-unknown", "feedback": "up"},
            {"id": first, "correction": "not-a-label"},
            {"id": first},
            {"id": first, "feedback": "sideways"},
            {"id": first, "feedback": "up", "colour": "red"},
            {"id": first, "feedback": "up", "input": credit_rows[2]},
        )]
        _, metrics, _ = call(f"{url}/metrics")
    assert [status for status, _, _ in refused] == [404, 422, 422, 422, 422, 422]
    assert "pred-unknown" in refused[0][1]["detail"] and "not-a-label" in refused[1][1]["detail"]
    assert "colour" in refused[4][1]["detail"] and "differs" in refused[5][1]["detail"]
    assert log.read_bytes() == before, "a refused feedback wrote to the log"
    records = read_feedback(log).records
    assert [r["feedback"] for r in records] == ["up", "down", 0.25]
    assert records[0]["user_id"].startswith("sha256:") and "alice" not in log.read_text()
    assert all(r["model_revision"] == served_credit.revision and r["model"] == served_credit.name for r in records)
    assert records[1]["completion"] == label and records[1]["correction"] == other
    assert records[1]["metadata"]["row"] == credit_rows[1] and records[2]["metadata"]["ward"] == "7"
    conversion = corrections_to_experience(records, tmp_path / "experience.csv")
    assert conversion.used == 1 and conversion.rows == [{**credit_rows[1], "label": other}]  # the row's own columns
    assert (tmp_path / "experience.csv").read_text().splitlines()[0].endswith(",label")
    assert 'hf_adapt_feedback_total{kind="thumb"} 2.0' in metrics and 'hf_adapt_feedback_total{kind="score"} 1.0' in metrics


def test_feedback_reaches_an_answer_given_before_a_restart(served_credit, credit_rows, tmp_path):
    with running(create_app(_server(served_credit, tmp_path))) as url:
        answer_id = _predict(url, credit_rows[:1])[1]["predictions"][0]["prediction_id"]
    with running(create_app(_server(served_credit, tmp_path))) as url:  # a new process's view: nothing in memory
        assert call(f"{url}/v1/feedback", {"id": answer_id, "feedback": "down"})[0] == 201


def test_without_recorded_inputs_feedback_carries_the_input(served_credit, credit_rows, tmp_path):
    with running(create_app(_server(served_credit, tmp_path, record_inputs=False))) as url:
        answer_id = _predict(url, credit_rows[:1])[1]["predictions"][0]["prediction_id"]
        missing = call(f"{url}/v1/feedback", {"id": answer_id, "feedback": "up"})
        given = call(f"{url}/v1/feedback", {"id": answer_id, "feedback": "up", "input": credit_rows[0]})
    kept = (tmp_path / "feedback" / ".answers" / "served.jsonl").read_text()
    assert missing[0] == 422 and "record_inputs" in missing[1]["detail"]
    assert given[0] == 201
    assert "input" not in json.loads(kept.splitlines()[0]) and str(credit_rows[0]["credit_amount"]) not in kept


def test_the_api_key_guards_every_route_but_health_and_metrics(served_credit, credit_rows, tmp_path):
    with running(create_app(_server(served_credit, tmp_path, api_key="s3cret"))) as url:
        anonymous = _predict(url, credit_rows[:1])
        wrong = call(f"{url}/v1/predict", {"inputs": credit_rows[:1]}, headers={"authorization": "Bearer nope"})
        right = call(f"{url}/v1/predict", {"inputs": credit_rows[:1]}, headers={"authorization": "Bearer s3cret"})
        feedback = call(f"{url}/v1/feedback", {"id": "x", "feedback": "up"})
        open_routes = [call(f"{url}{path}")[0] for path in ("/health", "/ready", "/metrics", "/openapi.json")]
    assert (anonymous[0], wrong[0], right[0], feedback[0]) == (401, 401, 200, 401)
    assert open_routes == [200, 200, 200, 200]


def test_limits_answer_with_clear_4xx(served_credit, credit_rows, tmp_path):
    server = _server(served_credit, tmp_path, max_inputs=4, max_body_bytes=20_000, rate_limit=2.0)
    with running(create_app(server)) as url:
        too_many = _predict(url, credit_rows[:5])
        too_big = call(f"{url}/v1/predict", {"inputs": credit_rows[:2], "pad": "x" * 30_000})
        bad_row = _predict(url, [{**credit_rows[0], "duration_in_month": "forever"}])
        statuses = [_predict(url, credit_rows[:1])[0] for _ in range(6)]
        limited = _predict(url, credit_rows[:1])
    assert too_many[0] == 413 and "max_inputs" in too_many[1]["detail"]
    assert too_big[0] == 413 and "max_body_bytes" in too_big[1]
    assert bad_row[0] == 422 and "duration_in_month" in bad_row[1]["detail"]
    assert 429 in statuses and limited[0] == 429 and int(limited[2]["retry-after"]) >= 1


def test_serving_on_the_network_needs_a_key(tmp_path):
    from hf_adapt.errors import ConfigError

    cfg = ServeConfig(model=str(tmp_path), host="0.0.0.0")
    with pytest.raises(ConfigError, match="HF_ADAPT_API_KEY"):
        cfg.check_exposure(None)
    cfg.check_exposure("a-key")
    ServeConfig(model=str(tmp_path), host="::1").check_exposure(None)


def test_model_at_revision_is_split(tmp_path):
    cfg = ServeConfig(model="org/credit@v3")
    assert (cfg.model, cfg.revision) == ("org/credit", "v3")


def test_the_command_refuses_what_it_cannot_serve(capsys, tmp_path):
    from hf_adapt.cli import main as cli

    assert cli(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert cli(["serve", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "HF_ADAPT_API_KEY" in capsys.readouterr().err


# ----------------------------------------------------------------------------- images


def _png(width: int, height: int, value: int = 128) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def digits_output(tiny_timm_convnet, digits_folder, tmp_path_factory):
    return train_finetune(tmp_path_factory.mktemp("serve_digits") / "out", model_name_or_path=str(tiny_timm_convnet),
                  data=str(digits_folder), label_column="label", reset_head=True, image_size=32,
                  metric_for_best_model="accuracy", adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8})


def test_images_as_base64_or_uploads_and_bombs_refused(digits_output, digits_folder, tmp_path):
    served = load_served(str(digits_output), None, False, "cpu")
    files = sorted(p for p in digits_folder.rglob("*.png"))[:3]
    expected = served.model.predict_proba([str(p) for p in files])
    with running(create_app(_server(served, tmp_path, max_image_pixels=100_000))) as url:
        encoded = _predict(url, [base64.b64encode(p.read_bytes()).decode() for p in files])
        boundary = "hfadaptboundary"
        parts = b"".join(b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\""
                         + p.name.encode() + b"\"\r\nContent-Type: image/png\r\n\r\n" + p.read_bytes() + b"\r\n"
                         for p in files) + b"--" + boundary.encode() + b"--\r\n"
        uploaded = call(f"{url}/v1/predict", data=parts,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        bomb = _predict(url, [base64.b64encode(_bomb_header(50_000, 50_000)).decode()])
        large = _predict(url, [base64.b64encode(_png(400, 400)).decode()])
        a_path = _predict(url, [str(files[0])])
        _, answers, _ = call(f"{url}/v1/predict", {"inputs": [base64.b64encode(files[0].read_bytes()).decode()]})
        thumbs = call(f"{url}/v1/feedback", {"id": answers["predictions"][0]["prediction_id"], "feedback": "up"})
    for status, body, _ in (encoded, uploaded):
        assert status == 200
        got = np.array([[p["probabilities"][n] for n in served.model.labels] for p in body["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert bomb[0] == 413 and "input 0: the image is a decompression bomb" in bomb[1]["detail"]
    assert large[0] == 413 and "max_image_pixels" in large[1]["detail"]
    assert a_path[0] == 422  # a string is never read as a path on the server
    assert thumbs[0] == 201
    record = read_feedback(tmp_path / "feedback" / "served.jsonl").records[0]
    assert record["prompt"].startswith("image sha256:") and len(record["metadata"]["image_sha256"]) == 64


def test_explain_answers_what_the_command_writes(served_credit, credit_rows, tmp_path):
    with running(create_app(_server(served_credit, tmp_path))) as url:
        status, body, _ = call(f"{url}/v1/explain", {"input": credit_rows[0], "steps": 8, "png": True})
        bad = call(f"{url}/v1/explain", {"input": credit_rows[0], "target": "maybe"})
    assert status == 200 and body["kind"] == "table" and body["revision"] == served_credit.revision
    assert {c["column"] for c in body["columns"]} >= {"duration_in_month", "purpose"}
    assert base64.b64decode(body["png_base64"]).startswith(b"\x89PNG")
    assert bad[0] == 422 and "maybe" in bad[1]["detail"]


def test_dicom_uploads_read_as_load_adapted_reads_them(digits_output, tmp_path):
    from pydicom.data import get_testdata_file

    dicom = get_testdata_file("CT_small.dcm")  # a real CT slice, 128 x 128, 16-bit
    served = load_served(str(digits_output), None, False, "cpu")
    expected = served.model.predict_proba([dicom])
    data = open(dicom, "rb").read()
    with running(create_app(_server(served, tmp_path, max_image_pixels=10_000))) as url:
        small_limit = _predict(url, [base64.b64encode(data).decode()])
    with running(create_app(_server(served, tmp_path))) as url:
        status, body, _ = _predict(url, [base64.b64encode(data).decode()])
    assert small_limit[0] == 413 and "128 x 128" in small_limit[1]["detail"]
    assert status == 200
    got = [body["predictions"][0]["probabilities"][n] for n in served.model.labels]
    np.testing.assert_allclose(got, expected[0], atol=1e-5)


def test_the_rate_limiter_forgets_idle_clients(monkeypatch):
    from hf_adapt.serve import app as serve_app

    monkeypatch.setattr(serve_app, "PRUNE_AT", 100)
    limiter = serve_app.RateLimiter(rate=1000.0)  # refills in 2 ms
    for i in range(500):
        assert limiter.wait_needed(f"10.0.{i // 256}.{i % 256}") == 0
    import time

    time.sleep(0.01)
    limiter.wait_needed("10.9.9.9")
    assert len(limiter._buckets) <= 101  # the refilled ones were dropped
    limited = serve_app.RateLimiter(rate=1.0)
    assert [limited.wait_needed("a") == 0 for _ in range(3)] == [True, True, False]  # a burst of 2, then wait
