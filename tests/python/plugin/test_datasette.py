"""datasette-audiotext in a real browser: Debian's chromium, headless, driven by Selenium with
Debian's chromedriver (no browser download). A fresh virtual environment gets the built wheel,
the plugin (python/datasette-audiotext) and Datasette from PyPI; `audiotext index` fills a
database from real recorded sounds (Debian's, as in test_package.py), `datasette serve` serves
it, and the browser checks what a user sees: the search page answers a description with the
right sound first, its player points at a file the server serves (and the browser decodes),
table pages show players, and segments give players that start at the moment.

The screenshot of the search page is written to target/screenshots/ (docs/datasette-search.png
is a copy)."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ROOT
from test_package import SOUNDS, fresh_venv, run, venv_env, walk_recording
from test_package import recordings, wheel  # noqa: F401  (fixtures)

PLUGIN = ROOT / "python" / "datasette-audiotext"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "target" / "screenshots"



@pytest.fixture(scope="module")
def plugin_venv(wheel, tmp_path_factory):  # noqa: F811
    # pip builds the plugin in place: a copy keeps the source tree clean.
    plugin = tmp_path_factory.mktemp("plugin") / PLUGIN.name
    shutil.copytree(PLUGIN, plugin)
    return fresh_venv(tmp_path_factory.mktemp("dvenv") / "env", wheel, plugin)


@pytest.fixture(scope="module")
def database(plugin_venv, recordings, tmp_path_factory):  # noqa: F811
    """Clips of the recordings folder, and the segments of one longer recording."""
    folder = tmp_path_factory.mktemp("db")
    long = walk_recording(recordings, folder / "long")[0].parent
    clips, moments = folder / "sounds.db", folder / "moments.db"
    audiotext = str(plugin_venv / "bin" / "audiotext")
    for args in ([audiotext, "index", str(recordings), str(clips)], [audiotext, "index", "--segments", str(long), str(moments)]):
        done = run(plugin_venv, args, cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
    return clips, moments


@pytest.fixture(scope="module")
def server(plugin_venv, database):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = venv_env(plugin_venv)
    log = open(database[0].parent / "datasette.log", "w")
    process = subprocess.Popen([str(plugin_venv / "bin" / "datasette"), "serve", *map(str, database), "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/-/versions.json", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("datasette did not start: " + (database[0].parent / "datasette.log").read_text()[-3000:])
            time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: scripts/install-deps.sh installs chromium and chromium-driver")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def fetch_in_page(browser, url):
    """Status and content type of `url` fetched by the page itself (its origin, its cookies)."""
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer().then(b => done([r.status, r.headers.get('content-type'), b.byteLength])))"
        ".catch(e => done([0, String(e), 0]));", url)


def wait_for_duration(browser, audio):
    """The browser loads the player's metadata: its duration, in seconds (NaN if it cannot)."""
    return browser.execute_async_script(
        "const a = arguments[0], done = arguments[arguments.length - 1];"
        "if (a.readyState >= 1) { done(a.duration); return; }"
        "a.addEventListener('loadedmetadata', () => done(a.duration));"
        "a.addEventListener('error', () => done(-1));"
        "a.load();", audio)


def test_search_page_finds_the_sound_and_plays_it(server, browser):
    browser.set_script_timeout(60)
    browser.get(f"{server}/-/audiotext")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("a rooster crowing")
    box.submit()
    # submit() returns before the answer's page has loaded: wait for its rows, not the old page's.
    results = "table.audiotext-results tbody tr"
    WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, results)))
    rows = browser.find_elements(By.CSS_SELECTOR, results)
    assert rows, browser.page_source[-3000:]
    first = rows[0]
    assert first.find_element(By.CSS_SELECTOR, ".audiotext-path").text.endswith("rooster.wav"), [r.text for r in rows]
    scores = [float(r.find_element(By.CSS_SELECTOR, ".audiotext-score").text) for r in rows]
    assert scores == sorted(scores, reverse=True) and len(rows) == len(SOUNDS), scores
    audio = first.find_element(By.TAG_NAME, "audio")
    source = audio.get_attribute("src")
    status, content_type, length = fetch_in_page(browser, source)
    assert status == 200 and content_type == "audio/wav" and length == SOUNDS["rooster.wav"].stat().st_size, (status, content_type, length)
    duration = wait_for_duration(browser, audio)
    soxi = float(subprocess.run(["soxi", "-D", str(SOUNDS["rooster.wav"])], capture_output=True, text=True, check=True).stdout)
    assert abs(duration - soxi) < 0.01, (duration, soxi)  # the browser decoded what was served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "datasette-search.png"))


def test_search_page_filters(server, browser):
    """The filters narrow the answer exactly (from clip_index): only .ogg files, only short ones."""
    browser.get(f"{server}/-/audiotext?database=sounds&q={quote('a rooster crowing')}&extension=ogg")
    paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.audiotext-results tbody .audiotext-path")]
    assert paths and all(p.endswith(".ogg") for p in paths), browser.page_source[-3000:]
    assert len(paths) == sum(name.endswith(".ogg") for name in SOUNDS)
    browser.get(f"{server}/-/audiotext?database=sounds&q={quote('a rooster crowing')}&max_duration=abc")
    assert "max duration must be a number of seconds" in browser.page_source


def test_segments_play_from_the_moment(server, browser):
    browser.set_script_timeout(60)
    browser.get(f"{server}/-/audiotext?database=moments&q={quote('thunder')}&k=1")
    row = browser.find_element(By.CSS_SELECTOR, "table.audiotext-results tbody tr")
    start, end = (float(x) for x in row.find_element(By.CSS_SELECTOR, ".audiotext-moment").text.split("\u2013"))
    # rain (1.0 s) after 10 s of noise, then 10 s of noise, then the thunder (5.5 s).
    assert start < 27.0 and end > 21.0, (start, end)
    audio = row.find_element(By.TAG_NAME, "audio")
    fragment = audio.get_attribute("src").rpartition("#t=")[2]
    t_start, t_end = (float(x) for x in fragment.split(","))
    assert abs(t_start - start) <= 0.05 and abs(t_end - end) <= 0.05, (fragment, start, end)
    wait_for_duration(browser, audio)
    # The media fragment puts the playhead at the moment's start.
    assert abs(browser.execute_script("return arguments[0].currentTime", audio) - t_start) < 0.05


def test_table_pages_show_players_and_only_listed_files_are_served(server, browser):
    browser.get(f"{server}/sounds/clips")
    players = browser.find_elements(By.CSS_SELECTOR, "td audio.audiotext-player")
    assert len(players) == len(SOUNDS), browser.page_source[-2000:]
    status, _, _ = fetch_in_page(browser, players[0].get_attribute("src"))
    assert status == 200
    # A file the database does not list is not served, whatever its name.
    status, _, _ = fetch_in_page(browser, f"{server}/-/audiotext/audio?database=sounds&path={quote('/etc/passwd')}")
    assert status == 404
    status, _, _ = fetch_in_page(browser, f"{server}/-/audiotext/audio?database=sounds&path={quote(str(SOUNDS['rooster.wav']))}")
    assert status == 404  # the real file, but the database lists it under its link's path
    # SQL in Datasette's editor has the extension's functions.
    browser.get(f"{server}/sounds?sql={quote('select audiotext_version()')}")
    assert "v0.1.0" in browser.page_source
