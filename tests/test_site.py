"""The docs site: `scripts/docs.py` executes pages and renders the plain HTML site (no Quarto), and every page of it
loads in headless Chromium with no console error, no broken link or image, and its figures showing.

The site is built once per session from a small subset (index + chapter 01, executed) in a copy of the repository;
the full site is `make docs`. The browser part needs Debian's `chromium` and `chromium-driver` and Selenium; without
them it is skipped and says so. Screenshots go to _proc/screenshots/.
"""
import json, os, re, shutil, subprocess, sys, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / '_proc' / 'screenshots'
SUBSET = 'index 01_neurons'


def find_chromium():
    "(browser, driver) paths, or a reason why the browser tests cannot run."
    browser = os.environ.get('LLM_LAB_CHROMIUM') or next(
        (shutil.which(b) for b in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(b)), None)
    driver = os.environ.get('LLM_LAB_CHROMEDRIVER') or shutil.which('chromedriver')
    import importlib.util
    if importlib.util.find_spec('selenium') is None: return None, None, 'Selenium is not installed (pip install -e ".[dev]")'
    if not browser or not driver:
        return None, None, ('Chromium/chromedriver not found: browser tests SKIPPED '
                            '(Debian: apt-get install -y chromium chromium-driver)')
    return browser, driver, ''


def chrome(width=1400, height=1000):
    "Headless Chromium through Selenium, console logs captured; skips the test when Chromium is missing."
    browser, driver, why = find_chromium()
    if why: pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              f'--window-size={width},{height}', '--allow-file-access-from-files'):
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope='session')
def site(tmp_path_factory):
    """A copy of the repository with _docs/ built from the executed subset; returns (root, seconds it took).
    Built once even when pytest-xdist spreads these tests over workers (they share the base temp folder)."""
    from filelock import FileLock  # comes with torch
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get('PYTEST_XDIST_WORKER') else tmp_path_factory.getbasetemp()
    with FileLock(str(shared / 'llm_lab_site.lock')):
        done = shared / 'llm_lab_site.json'
        if done.exists():
            path, secs = json.loads(done.read_text())
            return Path(path), secs
        work, secs = _build_site(shared / 'llm_lab_site')
        done.write_text(json.dumps([str(work), secs]))
        return work, secs


def _build_site(base: Path):
    if base.exists(): shutil.rmtree(base)
    work = base / 'repo'
    ignore = shutil.ignore_patterns('.venv', '.git', '_proc', '_docs', '__pycache__', '.ipynb_checkpoints', '*.egg-info')
    shutil.copytree(ROOT, work, symlinks=True, ignore=ignore)
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + '/usr/bin:/bin', LLM_LAB_QUIET='1')
    t0 = time.time()
    out = subprocess.run([sys.executable, 'scripts/docs.py', '--nbs', SUBSET, '--plain'], cwd=work,
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, round(time.time() - t0, 1)


class _Page(HTMLParser):
    "Collects ids, links and images of one HTML page."
    def __init__(self):
        super().__init__(); self.ids, self.links, self.imgs, self.spans = set(), [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a: self.ids.add(a['id'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img': self.imgs.append(a.get('src', ''))


def parse(path: Path) -> _Page:
    p = _Page(); p.feed(path.read_text(encoding='utf-8')); return p


def test_site_is_built_with_executed_outputs(site):
    work, secs = site
    docs = work / '_docs'
    assert (docs / 'index.html').exists() and (docs / '1_foundations' / 'neurons.html').exists()
    neurons = (docs / '1_foundations' / 'neurons.html').read_text(encoding='utf-8')
    assert neurons.count('src="data:image/png;base64,') >= 2, 'chapter 01 shows no figure: were its cells executed?'
    assert 'widget-view+json' not in neurons and 'widget-note' in neurons, 'a widget is not replaced by its note'
    assert '.ipynb"' not in neurons and '.ipynb#' not in neurons, 'a link to a notebook was not rewritten'
    processed = json.loads((work / '_proc' / '1_foundations' / '01_neurons.ipynb').read_text())
    assert processed['metadata'].get('llm_lab_executed')
    print(f'site of the subset {SUBSET!r} built in {secs:.0f} s')


def test_sidebar_lists_every_part_in_course_order(site):
    work, _ = site
    index = (work / '_docs' / 'index.html').read_text(encoding='utf-8')
    side = index[index.index('<nav class="sidebar">'):index.index('</nav>')]
    parts = re.findall(r'Part (\d+) ·', side)
    assert parts == sorted(parts, key=int) and {'0', '1', '2', '3', '5', '7'} <= set(parts)
    sys.path.insert(0, str(ROOT / 'scripts'))
    try: import docs
    finally: sys.path.pop(0)
    planned = [n for _, n, _ in docs.planned_chapters() if n not in {docs.chapter_key(p)[0] for p in docs.course_pages()}]
    if planned: assert '(planned)' in side, 'planned chapters are not in the sidebar'
    assert re.search(r'class="companion"><span[^>]*>09a · companion', side), 'companions do not read as part of 09'
    assert 'class="unbuilt"' in side  # pages outside the subset: plain text, not broken links
    assert '01 · Neurons' in side


def test_local_links_and_anchors_resolve(site):
    "Every relative link of every page points at a file of the site, and at an id on it when it has a fragment."
    docs = site[0] / '_docs'
    pages = sorted(docs.rglob('*.html'))
    assert len(pages) == 2
    for page in pages:
        for href in parse(page).links:
            u = urlparse(href)
            if u.scheme or href.startswith('#') and not href[1:]: continue
            target = (page.parent / unquote(u.path)).resolve() if u.path else page
            assert target.is_file(), f'{page.relative_to(docs)} links to missing {href}'
            if u.fragment and target.suffix == '.html':
                assert unquote(u.fragment) in parse(target).ids, f'{page.relative_to(docs)}: no #{u.fragment} in {href}'


def test_every_page_loads_in_chromium(site):
    "No console error, no broken image, no broken link; a page with a figure shows it (natural size > 0)."
    docs = site[0] / '_docs'
    driver = chrome()
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        figures = 0
        for page in sorted(docs.rglob('*.html')):
            name = page.relative_to(docs).as_posix()
            driver.get(page.as_uri())
            driver.execute_script('return document.readyState')
            time.sleep(0.3)
            errors = [l for l in driver.get_log('browser') if l['level'] == 'SEVERE'
                      # MathJax comes from its CDN; a machine without network cannot load it: not the page's fault
                      and not re.search(r'https?://cdn\.jsdelivr\.net/', l['message'])]
            assert not errors, f'{name}: console errors {errors}'
            imgs = driver.execute_script(
                'return [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 40)])')
            broken = [i for i in imgs if not (i[0] and i[1] > 0 and i[2] > 0)]
            assert not broken, f'{name}: broken images {broken}'
            figures += len(imgs)
            links = driver.execute_script(
                'return [...document.querySelectorAll("a[href]")].map(a => a.href).filter(h => h.startsWith("file:"))')
            for href in links:
                assert Path(unquote(urlparse(href).path)).is_file(), f'{name}: broken link {href}'
            driver.save_screenshot(str(SHOTS / f'site-{name.replace("/", "-")}.png'))
        assert figures >= 2, 'no page of the site shows a figure'
        driver.get((docs / '1_foundations' / 'neurons.html').as_uri())
        shown = driver.execute_script('const i = document.querySelector("main img"); i.scrollIntoView();'
                                      'return [i.naturalWidth, i.getBoundingClientRect().width]')
        assert shown[0] > 0 and shown[1] > 0
        driver.save_screenshot(str(SHOTS / 'site-neurons-figure.png'))
    finally:
        driver.quit()


def test_planned_chapters_are_marked(monkeypatch):
    "A chapter the index's course map lists without a notebook is in the sidebar, marked planned, in its part."
    sys.path.insert(0, str(ROOT / 'scripts'))
    try: import docs
    finally: sys.path.pop(0)
    monkeypatch.setattr(docs, 'planned_chapters', lambda: [('7 Multimodal', '98', 'future fusion'), ('9 For instructors', '99', 'more')])
    yml = docs.sidebar_yml()
    assert 'text: "98 · future fusion (planned)"' in yml and 'text: "99 · more (planned)"' in yml
    assert yml.index('Part 7') < yml.index('98 · future fusion') < yml.index('Part 8')
    assert 'section: "09 · ' in yml and 'companion:' in yml  # companions nest under their chapter
