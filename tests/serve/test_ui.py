"""The reviewer page at ``/ui`` in a real browser (Debian's chromium, driven by playwright): a prediction, a thumb
and a corrected label each end as a record in the feedback log; for a language model, a thumb on a chat answer."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

pytest.importorskip("gradio", reason="the serve extra is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from hf_adapt.feedback.log import read_feedback  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.serve.helpers import running  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium (.ci/run does)"),
              pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_a_reviewer_predicts_and_corrects_a_text(browser, tiny_bert, credit_sample, tmp_path):
    frame = pd.read_csv(credit_sample)
    texts = pd.DataFrame({"text": [f"{r['purpose']}, {r['duration_in_month']} months" for r in frame.to_dict("records")],
                          "housing": frame["housing"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    output = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(tmp_path / "texts.csv"),
                            text_column="text", label_column="housing")
    served = load_served(str(output), None, False, "cpu")
    log = tmp_path / "feedback" / "served.jsonl"
    server = Server(ServeConfig(model=str(output), feedback_log=str(log), ui=True), served)
    with running(create_app(server)) as url:
        page = browser.new_page()
        page.goto(f"{url}/ui/")
        page.locator("#text textarea").fill("car (new), 24 months")
        page.locator("#predict").click()
        answer = page.locator("#answer-id textarea")
        page.wait_for_function("() => document.querySelector('#answer-id textarea').value.startsWith('pred-')")
        answer_id = answer.input_value()
        page.locator("#thumbs-up").click()
        page.wait_for_selector("#status :text('Recorded (up)')")
        page.locator("#correction input").click()
        page.get_by_role("option", name="rent").click()
        page.locator("#send-correction").click()
        page.wait_for_selector("#status :text('correction rent')")
        page.close()
    records = read_feedback(log).records
    assert [r["feedback"] for r in records][0] == "up" and records[1]["correction"] == "rent"
    assert all(r["metadata"]["answer_id"] == answer_id and r["metadata"]["via"] == "ui" for r in records)
    assert all(r["prompt"] == "car (new), 24 months" and r["model_revision"] == served.revision for r in records)


def test_a_thumb_on_a_chat_answer_is_a_record(browser, tiny_chat_llama, tmp_path):
    from hf_adapt.recipes.feedback import FeedbackConfig
    from hf_adapt.recipes.feedback import main as feedback_main
    from tests.feedback.conftest import product_feedback, write_log

    log_in = write_log(tmp_path / "chat.jsonl", product_feedback(range(4), conversational=True))
    output = feedback_main(FeedbackConfig(model_name_or_path=str(tiny_chat_llama), feedback=str(log_in),
                                          output_dir=str(tmp_path / "policy"), trainer="sft", max_steps=1, max_length=64,
                                          torch_num_threads=1, adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8},
                                          max_new_tokens=8)).output_dir
    log = tmp_path / "served" / "served.jsonl"
    server = Server(ServeConfig(model=str(output), feedback_log=str(log), max_new_tokens=6, ui=True),
                    load_served(str(output), None, False, "cpu"))
    with running(create_app(server)) as url:
        page = browser.new_page()
        page.goto(f"{url}/ui/")
        page.locator("#message textarea").fill("How was product 2?")
        page.locator("#message textarea").press("Enter")
        page.wait_for_selector("#chat [data-testid='bot']")
        page.locator("#chat [data-testid='bot']").first.hover()
        page.get_by_role("button", name="Like", exact=True).first.click()
        page.wait_for_selector("#status :text('Recorded (up)')")
        page.close()
    (record,) = read_feedback(log).records
    assert record["feedback"] == "up" and record["prompt"] == [{"role": "user", "content": "How was product 2?"}]
    assert record["completion"][0]["role"] == "assistant" and record["metadata"]["via"] == "ui"


def test_a_reviewer_corrects_a_regression_model_with_a_number(browser, tiny_bert, credit_sample, tmp_path):
    frame = pd.read_csv(credit_sample)
    texts = pd.DataFrame({"text": [f"{r['purpose']}, {r['credit_amount']} DM" for r in frame.to_dict("records")],
                          "months": frame["duration_in_month"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    output = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(tmp_path / "texts.csv"),
                            text_column="text", label_column="months", task="regression", text_template=None,
                            metric_for_best_model="rmse", bootstrap_resamples=0)
    served = load_served(str(output), None, False, "cpu")
    log = tmp_path / "feedback" / "served.jsonl"
    server = Server(ServeConfig(model=str(output), feedback_log=str(log), ui=True), served)
    with running(create_app(server)) as url:
        page = browser.new_page()
        page.goto(f"{url}/ui/")
        page.locator("#text textarea").fill("car (new), 2500 DM")
        page.locator("#predict").click()
        page.wait_for_function("() => document.querySelector('#answer-id textarea').value.startsWith('pred-')")
        page.wait_for_selector("#prediction :text('months =')")
        page.locator("#correction input").fill("24")
        page.locator("#send-correction").click()
        page.wait_for_selector("#status :text('Recorded')")
        page.close()
    (record,) = read_feedback(log).records
    assert record["correction"] == "24" and record["prompt"] == "car (new), 2500 DM"
    assert float(record["completion"]) == pytest.approx(served.model.predict_values(["car (new), 2500 DM"])[0], rel=1e-6)
