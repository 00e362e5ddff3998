"""The chat page at `/`, driven in headless Chromium through Selenium: a typed message streams a
reply in, the conversation is multi-turn, thinking is shown apart and collapsed, Markdown is
rendered and raw HTML from the model is not."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from minigpt.inference.web import render_markdown

from serving import Running, ScriptedBatcher, save_readable_chat_model

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="needs Chromium and chromedriver (Debian: apt install chromium chromium-driver)"
)


def test_markdown_is_rendered_and_raw_html_is_escaped():
    html = render_markdown("**bold** <img src=x onerror=alert(1)> [a](javascript:alert(1))\n\n```python\nx = 1\n```\n")
    assert "<strong>bold</strong>" in html
    assert "<img" not in html and "&lt;img" in html
    assert 'href="javascript' not in html
    assert '<pre class="code" data-lang="python"><code><span class="n">x</span>' in html


def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_readable_chat_model(tmp_path_factory.mktemp("web") / "tiny-chat")


def wait_for(predicate, timeout: float = 30.0, every: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def answers(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.msg.assistant .answer')].map(e => e.textContent)")


def type_message(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def set_field(driver, field: str, value: str) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('change'));",
        field, value,
    )


@needs_browser
def test_a_typed_message_streams_in_and_the_chat_is_multi_turn(model_dir):
    from minigpt.recipes.serve import build_server

    running = Running(build_server(str(model_dir), max_batch_size=2, device="cpu"))
    driver = browser()
    try:
        driver.get(running.url + "/")
        wait_for(lambda: "tiny-chat" in driver.execute_script("return document.getElementById('model-name').textContent"))
        set_field(driver, "temperature", "0")
        set_field(driver, "max_tokens", "1200")
        type_message(driver, "hello")
        # Sample the answer while it streams: it must be seen growing through several lengths.
        lengths = []
        while not driver.execute_script("return document.getElementById('send').disabled === false && "
                                        "document.querySelectorAll('.stats')[0].textContent !== ''"):
            got = answers(driver)
            if got:
                lengths.append(len(got[0]))
            time.sleep(0.01)
        partial = sorted({n for n in lengths if n > 0})
        first = answers(driver)[0]
        assert len(partial) >= 3 and partial[0] < len(first), partial[:5]
        client = running.client()
        want = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello"}], temperature=0, top_p=0.95, max_tokens=1200
        ).choices[0].message.content
        assert first.strip() == want.strip()
        stats = driver.execute_script("return document.querySelector('.stats').textContent")
        assert re.search(r"\b\d+ tokens · [\d.]+ tokens/s", stats), stats
        # Second turn: the page sends the first exchange back (the answer, as history).
        set_field(driver, "max_tokens", "20")
        type_message(driver, "and then?")
        wait_for(lambda: len(driver.execute_script("return [...document.querySelectorAll('.stats')].map(e => e.textContent).filter(t => t)")) == 2)
        second = answers(driver)[1]
        history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": want},
                   {"role": "user", "content": "and then?"}]
        want2 = client.chat.completions.create(model="tiny-chat", messages=history, temperature=0, top_p=0.95,
                                               max_tokens=20).choices[0].message.content
        assert second.strip() == want2.strip()
    finally:
        driver.quit()
        running.stop()


@needs_browser
def test_thinking_is_shown_apart_collapsed_and_markdown_rendered(model_dir):
    from minigpt.inference.engine import GenerationEngine
    from minigpt.inference.loading import load_model_and_tokenizer
    from minigpt.inference.server import OpenAIServer, create_app
    from minigpt.tokenizer.special import THINK_END, THINK_START
    from minigpt.tokenizer.chat import chat_eos_ids

    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = ([tok.convert_tokens_to_ids(THINK_START)] + enc("add 1 and 2") + [tok.convert_tokens_to_ids(THINK_END)]
              + enc("It is **3** <b>x</b>"))
    engine = GenerationEngine(model, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id)
    running = Running(create_app(OpenAIServer(ScriptedBatcher(engine, script), tok, "thinker")))
    driver = browser()
    try:
        driver.get(running.url + "/")
        wait_for(lambda: "thinker" in driver.execute_script("return document.getElementById('model-name').textContent"))
        type_message(driver, "1 + 2?")
        wait_for(lambda: driver.execute_script("return document.querySelector('.stats') && document.querySelector('.stats').textContent"))
        state = wait_for(lambda: driver.execute_script("""
            const m = document.querySelector('.msg.assistant');
            const a = m.querySelector('.answer');
            if (a.classList.contains('plain')) return null;  // Markdown not rendered yet
            const d = m.querySelector('details.thinking');
            return {hidden: d.hidden, open: d.open, thought: d.querySelector('.thought').textContent,
                    answer: a.textContent, strong: a.querySelector('strong') && a.querySelector('strong').textContent,
                    bold_tag: a.querySelector('b') !== null};"""))
        assert state["thought"] == "add 1 and 2" and not state["hidden"]
        assert state["open"] is False  # collapsed once the answer began
        assert state["answer"].strip() == "It is 3 <b>x</b>"  # the model's raw HTML shows as text
        assert state["strong"] == "3" and state["bold_tag"] is False
    finally:
        driver.quit()
        running.stop()
