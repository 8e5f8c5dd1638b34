"""The trajectory viewer: pages of real (tiny) evaluation and GRPO run folders, escaping, errors, and the
page in a real headless Chromium (no script errors, filters change the visible count)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from search_fakes import ScriptedTurns

from mmsearch_r1.evaluation.viewer import main, render_page, write_viewer

HOSTILE = "<script>window.__pwned = 1</script>"
IMG = "<reason>r</reason><search><img></search><|im_end|>"
TXT = "<reason>r " + HOSTILE + "</reason><text_search>q</text_search><|im_end|>"
ANS = "<reason>r</reason><answer>{}</answer><|im_end|>"


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """An evaluation run folder written by `evaluate` (tiny policy, scripted turns, synthetic engines)."""
    from mmsearch_r1.evaluation.evaluate import EvalConfig, evaluate
    from mmsearch_r1.policy.tiny import build_tiny_policy
    from mmsearch_r1.rl.data import synthetic_rows

    out = tmp_path_factory.mktemp("eval")
    model, processor = build_tiny_policy()
    cfg = EvalConfig(name="ev", engine="synthetic", out_dir=str(out), progress=False, policy="tiny")
    evaluate(
        cfg,
        policy=(model, processor),
        datasets={"synthetic": synthetic_rows(4)},
        generator=ScriptedTurns(processor, [IMG, TXT, ANS.format("Azuria")]),
    )
    return out / "ev"


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A GRPO run folder from one step of a tiny policy overfit to 'image search, then answer'
    (the pattern of test_train.py::test_tool_calls_reach_metrics_samples_and_rollout_images)."""
    from search_fakes import image_search_policy

    from mmsearch_r1.policy.load import Policy
    from mmsearch_r1.rl.config import preset
    from mmsearch_r1.rl.data import synthetic_engines
    from mmsearch_r1.rl.train import train

    tmp = tmp_path_factory.mktemp("train")
    engines = synthetic_engines(tmp / "index")
    model, processor, rows, _ = image_search_policy(engines)
    cfg = preset("tiny", output_dir=str(tmp / "run"), max_steps=1, prompts_per_step=1, temperature=0.3,
                 max_completion_length=400, save_steps=10, log_samples=8)  # fmt: skip
    train(cfg, policy=Policy(model, processor, "tiny", "tiny"), rows=rows, engines=engines)
    return cfg.run_dir


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_page_has_every_rollout_images_filters_and_escaped_text(eval_run):
    items = _lines(eval_run / "eval_items.jsonl")
    assert len(items) == 12
    on_demand = next(r for r in items if r["method"] == "on_demand")
    assert on_demand["images"]["question"] and len(on_demand["images"]["tools"]) == len(
        on_demand["observations"]
    )
    assert on_demand["images"]["tools"][0]  # the image search's thumbnails
    page, n = render_page(eval_run)
    assert n == len(items) == page.count('<article class="rollout')
    assert page.count("data:image/jpeg;base64,") >= len(items)
    assert HOSTILE not in page and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the page's own script only
    for control in ('data-key="method"', 'data-value="wrong"', 'data-value="searched"', 'data-key="kind"'):
        assert control in page
    for method in ("direct", "rag", "on_demand"):
        assert f'data-value="{method}"' in page


def test_training_samples_keep_bounded_images_and_the_page_shows_them(train_run):
    from mmsearch_r1.tools.cache import image_from_b64

    samples = _lines(train_run / "samples.jsonl")
    assert samples and all(
        "<image>" not in json.dumps(s["messages"]) or s["images"]["tools"] for s in samples
    )
    searched = [s for s in samples if s["searched"]]
    assert searched and searched[0]["images"]["tools"][0]
    for b64 in [searched[0]["images"]["question"], *searched[0]["images"]["tools"][0]]:
        assert max(image_from_b64(b64).size) <= 128
    assert {"kind", "prediction", "em"} <= set(samples[0])
    page, n = render_page(train_run)
    assert n == len(samples) and 'data-key="step"' in page and "reward:" in page
    assert page.count("data:image/jpeg;base64,") >= len(samples) + len(searched)


def test_hostile_records_are_escaped_and_bad_images_dropped(tmp_path):
    hostile = {"step": 1, "question": HOSTILE, "answer": "a", "reward": 0.5, "kind": '"><script>x</script>',
               "messages": [{"role": "assistant", "content": HOSTILE},
                            {"role": "tool", "name": "search", "content": "1. <image> <b>title</b>"}],
               "images": {"question": '" onerror="alert(1)', "tools": [["AAAA\" onload=x"]]}}  # fmt: skip
    (tmp_path / "samples.jsonl").write_text(json.dumps(hostile) + "\n")
    path, n = write_viewer(tmp_path)
    page = path.read_text()
    assert n == 1 and page.count("<script") == 1 and "<b>title" not in page
    assert "onerror" not in page and "onload" not in page and "<img" not in page


def test_missing_or_empty_run_folder_is_one_error_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err and "evaluate" in err
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mmsearch_r1.evaluation.viewer", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "empty" in proc.stderr and "Traceback" not in proc.stderr


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Chromium not found: the viewer's browser test needs Debian's chromium package. Install it with "
            "`apt-get install -y chromium` (`make setup` does this when apt-get is available)."
        )
    return path


def test_page_in_headless_chromium_filters_and_has_no_script_errors(eval_run, train_run):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `.venv/bin/pip install -e .` (it is a dependency)")
    exe = _chromium()
    items = _lines(eval_run / "eval_items.jsonl")
    correct = [r for r in items if (r["judge"] if r.get("judge") is not None else r["em"])]
    assert 0 < len(correct) < len(items)  # 'Azuria' is right for one question: the filter has work to do
    eval_page, _ = write_viewer(eval_run)
    train_page, n_train = write_viewer(train_run)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            def visible() -> int:
                return page.locator("article.rollout:visible").count()

            page.goto(eval_page.resolve().as_uri())
            assert visible() == len(items) and page.text_content("#count").startswith(f"{len(items)} of")
            page.click('#filters button[data-key="verdict"][data-value="wrong"]')
            assert visible() == len(items) - len(correct)
            page.click('#filters button[data-key="method"][data-value="direct"]')
            assert visible() == sum(r["method"] == "direct" and r not in correct for r in items)
            page.click('#filters button[data-key="verdict"][data-value=""]')
            assert visible() == sum(r["method"] == "direct" for r in items) == 4
            page.click('#filters button[data-key="search"][data-value="searched"]')
            assert visible() == 0  # direct refuses every search
            assert page.evaluate("window.__pwned") is None
            assert page.evaluate("document.querySelector('img').naturalWidth") > 0  # the data URI decodes

            page.goto(train_page.resolve().as_uri())
            assert visible() == n_train
            page.select_option('#filters select[data-key="step"]', "1")
            assert visible() == n_train
            assert errors == []
        finally:
            browser.close()
