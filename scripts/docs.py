"""`make docs`: execute every notebook into the processed copy (_proc/), write the sidebar and README.md, then
render the site: with Quarto when `quarto` is on PATH, otherwise a plain HTML site (scripts/site.py) into _docs/.

    python scripts/docs.py                                  # every page (N at a time), then the site
    python scripts/docs.py --nbs "01_neurons 00_core"       # only these (names, stems or paths under nbs/)
    python scripts/docs.py --no-render                      # stop after processing

Notebooks are committed without outputs, so the site's figures, tables and printed results are produced here:
each page runs top to bottom in its own process, the way `nbdev_test` runs it (cells flagged with settings.ini's
`tst_flags`, i.e. `#| slow` and `#| gpu`, and `#| eval: false` cells are skipped), through nbdev's own docs
processors (show_doc cells, hidden cells, doc links…). A page whose processed copy is newer than its notebook and
than the package is not run again (`--force` runs it anyway). A page left out of `--nbs` keeps the copy of an
earlier build, if any; the site links only the pages that were built.

Why not plain `nbdev_docs`? When Quarto is missing, nbdev 2's docs commands try to install it with sudo and to
pip-install the project, and they only run the show_doc cells. This script calls the same nbdev steps without that.
"""
import argparse, json, os, re, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
PROC = ROOT / '_proc'
NB_TIMEOUT_S = 900          # a page that runs longer than this is a bug (chapter budget: 90 s, 4 min when training)
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
WIDGET_NOTE = ('<p class="widget-note">▸ An interactive control runs here in the lab (<code>make lab</code>); '
               'a static page cannot run it. The figure beside it shows the same idea at fixed settings.</p>')
EXECUTED = 'llm_lab_executed'  # notebook metadata key marking a processed copy that was executed in full


# ---------------------------------------------------------------- pages and the sidebar
def section_title(folder: str) -> str:
    "'1_foundations' → 'Part 1 · Foundations'; '0_the_lab' → 'Part 0 · The lab'."
    num, _, name = folder.partition('_')
    return f'Part {num} · {name.replace("_", " ").capitalize()}' if num.isdigit() else folder.replace('_', ' ')


def course_pages() -> list:
    "The notebooks of the site, as paths relative to nbs/, in reading order."
    pages = [p.relative_to(NBS) for p in NBS.rglob('*.ipynb')
             if not any(s.startswith(('_', '.')) for s in p.relative_to(NBS).parts)]
    return sorted(pages, key=lambda p: (len(p.parts) > 1, str(p)))


def chapter_key(page) -> tuple:
    "'3_pretraining/09a_generate.ipynb' → ('09', 'a'): the chapter number and the companion letter ('' for a chapter)."
    m = re.match(r'(\d+)([a-z]?)_', Path(page).name)
    return (m.group(1), m.group(2)) if m else ('', '')


def notebook_title(path: Path) -> str:
    "The notebook's first `# heading` (what nbdev makes the page title), or its file name."
    try:
        for cell in json.loads(path.read_text(encoding='utf-8'))['cells']:
            src = ''.join(cell['source']).strip()
            if cell['cell_type'] == 'markdown' and src.startswith('# '): return src.splitlines()[0][2:].strip()
    except (OSError, ValueError, KeyError): pass
    return path.stem


def page_label(page: Path) -> str:
    "Sidebar text: '01 · Neurons…' for a chapter, '09a · companion: …' for a companion notebook."
    title = notebook_title(NBS / page)
    num, letter = chapter_key(page)
    if not num: return title
    title = re.sub(rf'^{num}{letter}\s*[·:.\-–]\s*', '', title).lstrip('# ')  # a title that starts with its number
    return f'{num}{letter} · companion: {title}' if letter else f'{num} · {title}'


def planned_chapters() -> list:
    """(part, number, name) of the chapters the index's course map lists without a link: planned, not written yet.
    `part` is the map's part column ('5 Alignment'), carried down from the last row that named one."""
    nb = json.loads((NBS / 'index.ipynb').read_text(encoding='utf-8'))
    text = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    out, part = [], None
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip('|').split('|')] if line.lstrip().startswith('|') else []
        if len(cols) < 2 or set(cols[0]) <= set('-: ') and cols[0]: continue
        if cols[0] and cols[0].lower() != 'part': part = cols[0]
        for item in (i.strip() for i in cols[1].split(',')):
            m = re.fullmatch(r'(\d+)\s*·\s*(.+)', item)  # plain text, no link: a planned chapter
            if m and part: out.append((part, m.group(1), m.group(2)))
    return out


def sidebar_entries() -> list:
    """The sidebar as a tree: [('page', path, label)] for the index, then per part
    ('section', title, [entries]) where a chapter with companions is ('chapter', path, label, [companions]) and a
    planned chapter is ('planned', None, label). Parts are in course order; planned parts appear too."""
    pages = course_pages()
    existing = {chapter_key(p)[0] for p in pages}
    parts = {}  # part number → (title, [(sort key, entry)])
    for page in pages:
        if len(page.parts) == 1: continue
        num = page.parts[0].partition('_')[0]
        parts.setdefault(num, (section_title(page.parts[0]), []))
    for part, num, name in planned_chapters():
        if num in existing: continue
        pnum, _, pname = part.partition(' ')
        parts.setdefault(pnum, (f'Part {pnum} · {pname.strip().capitalize()}', []))
        parts[pnum][1].append(((num, ''), ('planned', None, f'{num} · {name} (planned)')))
    chapters = {}
    for page in pages:
        if len(page.parts) == 1: continue
        num, letter = chapter_key(page)
        if letter: continue
        entry = ('chapter', page, page_label(page), [])
        chapters[num] = entry
        parts[page.parts[0].partition('_')[0]][1].append(((num, ''), entry))
    for page in pages:
        num, letter = chapter_key(page)
        if len(page.parts) == 1 or not letter: continue
        if num in chapters: chapters[num][3].append(('page', page, page_label(page)))
        else: parts[page.parts[0].partition('_')[0]][1].append(((num, letter), ('page', page, page_label(page))))
    tree = [('page', p, page_label(p) if p.name != 'index.ipynb' else 'Home') for p in pages if len(p.parts) == 1]
    for pnum in sorted(parts, key=lambda n: int(n) if n.isdigit() else 99):
        title, items = parts[pnum]
        tree.append(('section', title, [e for _, e in sorted(items, key=lambda kv: kv[0])]))
    return tree


def sidebar_yml() -> str:
    "nbs/sidebar.yml for Quarto: index first, one section per part, companions nested under their chapter."
    lines = ['website:', '  sidebar:', '    contents:']
    q = lambda s: json.dumps(s, ensure_ascii=False)
    for kind, *rest in sidebar_entries():
        if kind == 'page': lines.append(f'      - {rest[0].as_posix()}'); continue
        title, items = rest
        lines += [f'      - section: {q(title)}', '        contents:']
        for item in items:
            if item[0] == 'planned': lines.append(f'          - text: {q(item[2])}')
            elif item[0] == 'page': lines += [f'          - text: {q(item[2])}', f'            href: {item[1].as_posix()}']
            elif not item[3]: lines += [f'          - text: {q(item[2])}', f'            href: {item[1].as_posix()}']
            else:
                lines += [f'          - section: {q(item[2])}', f'            href: {item[1].as_posix()}', '            contents:']
                for _, page, label in item[3]:
                    lines += [f'              - text: {q(label)}', f'                href: {page.as_posix()}']
    return '\n'.join(lines) + '\n'


def readme_from(processed_index: Path) -> str:
    "GitHub-flavoured markdown from the processed index notebook: its prose and code (outputs are machine-specific)."
    import yaml
    nb = json.loads(processed_index.read_text(encoding='utf-8'))
    out = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src: continue
        if cell['cell_type'] == 'raw' and src.startswith('---'):  # nbdev's front matter: title and description
            meta = yaml.safe_load(src.strip('-\n')) or {}
            out += [f"# {meta.get('title', 'llm_lab')}", f"> {meta['description']}"] if 'description' in meta else []
        elif cell['cell_type'] == 'markdown':
            out.append(src)
        elif cell['cell_type'] == 'code':
            out.append(f'```python\n{src}\n```')
    return '\n\n'.join(out).strip() + '\n'


# ---------------------------------------------------------------- executing one page (runs in its own process)
def process_one(src: Path, dst: Path, skip_flags: set):
    "Execute `src` through nbdev's docs processors, every cell run (except flagged ones), and write `dst`."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.process import Processor
    from nbdev.processors import FilterDefaults, exec_show_docs

    class exec_all(Processor):
        "In place of nbdev's exec_show_docs: run every code cell as nbdev_test does, keeping its outputs."
        def begin(self):
            self.k = CaptureShell(src)
            self.k.run_cell('from nbdev.showdoc import show_doc')

        def __call__(self, cell):
            if cell.cell_type != 'code' or not cell.source.strip() or 'nbdev_export' + '(' in cell.source: return
            direc = getattr(cell, 'directives_', {}) or {}
            if direc.get('eval:', [''])[0].lower() == 'false' or skip_flags & direc.keys(): return
            self.k.cell(cell)
            if self.k.exc:
                raise RuntimeError(f'{src.relative_to(NBS)}: cell {getattr(cell, "idx_", "?")} failed:\n{cell.source[:500]}\n'
                                   + self.k.prettytb(fname=src)) from None

    class ExecDefaults(FilterDefaults):
        def base_procs(self): return [exec_all if p is exec_show_docs else p for p in super().base_procs()]

    os.environ['IN_TEST'] = '1'
    os.chdir(src.parent)
    nb = read_nb(src)
    ExecDefaults()(nb)
    for cell in nb.cells:  # a static page cannot run a widget: a note instead (the chapter's static figure is beside it)
        for o in cell.get('outputs', []):
            if WIDGET_MIME in o.get('data', {}): o['data'] = {'text/html': WIDGET_NOTE}
    nb.metadata[EXECUTED] = True
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)


def up_to_date(page: Path) -> bool:
    "The processed copy was executed after the notebook and the package last changed."
    dst = PROC / page
    if not dst.exists(): return False
    try:
        if not json.loads(dst.read_text(encoding='utf-8')).get('metadata', {}).get(EXECUTED): return False
    except ValueError: return False
    newest = max([(NBS / page).stat().st_mtime] + [p.stat().st_mtime for p in (ROOT / 'llm_lab').glob('*.py')])
    return dst.stat().st_mtime > newest


def run_page(page: Path, env: dict):
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), '--process-one', str(page)]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=NB_TIMEOUT_S)
        ok, log = res.returncode == 0, res.stdout + res.stderr
    except subprocess.TimeoutExpired:
        ok, log = False, f'timed out after {NB_TIMEOUT_S} s'
    return page, ok, time.time() - t0, log


def select(spec: str) -> list:
    "Pages matching `spec`: names, stems or paths relative to nbs/, separated by spaces or commas ('01_neurons index')."
    pages = course_pages()
    if not spec.strip(): return pages
    chosen = []
    for want in re.split(r'[\s,]+', spec.strip()):
        want = want.removeprefix('nbs/').removesuffix('.ipynb')
        hits = [p for p in pages if want in (p.with_suffix('').as_posix(), p.stem) or p.stem.startswith(want + '_')]
        if not hits: sys.exit(f'--nbs: no notebook matches {want!r}')
        chosen += [h for h in hits if h not in chosen]
    return chosen


def process(pages: list, workers: int, force: bool = False) -> dict:
    """nbdev.yml, the doc-links index and the sidebar; the site's other files copied into _proc/; then each page
    executed and processed, `workers` at a time. Returns {page: seconds} and exits on a failed page."""
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.doclinks import _build_modidx
    refresh_quarto_yml()                      # nbs/nbdev.yml from settings.ini (nbs/_quarto.yml links to ../_quarto.yml)
    _build_modidx()                           # llm_lab/_modidx.py: the index behind doc links
    (NBS / 'sidebar.yml').write_text(sidebar_yml(), encoding='utf-8')
    PROC.mkdir(exist_ok=True)
    for f in NBS.iterdir():                   # what Quarto needs besides the notebooks
        if f.is_file() and f.suffix != '.ipynb' and not f.name.startswith('.'): shutil.copyfile(f, PROC / f.name)
    todo = [p for p in pages if force or not up_to_date(p)]
    if len(todo) < len(pages): print(f'{len(pages) - len(todo)} page(s) up to date, not run again (--force runs them)')
    from nbdev.config import get_config
    skip = ' '.join(get_config().get('tst_flags', '').split())
    env = dict(os.environ, LLM_LAB_QUIET='1', MPLBACKEND='Agg', PYTHONHASHSEED='0', LLM_LAB_DOCS_SKIP=skip,
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // max(1, workers))))
    times, failed = {}, []
    print(f'executing {len(todo)} page(s), {workers} at a time (skipping cells flagged: {skip or "none"})', flush=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for fut in as_completed([pool.submit(run_page, p, env) for p in todo]):
            page, ok, secs, log = fut.result()
            times[page.as_posix()] = round(secs, 1)
            print(f'  {"✓" if ok else "✗"} {page.as_posix()}  {secs:.0f} s', flush=True)
            if not ok: failed.append(page.as_posix()); print('\n'.join('      ' + l for l in log.strip().splitlines()[-30:]))
    if failed: sys.exit(f'executing failed for: {", ".join(failed)}')
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='pages executed in parallel')
    ap.add_argument('--nbs', default='', help="only these pages, e.g. 'index 01_neurons' (default: all)")
    ap.add_argument('--force', action='store_true', help='run pages even when their processed copy is up to date')
    ap.add_argument('--no-render', action='store_true', help='stop after processing')
    ap.add_argument('--plain', action='store_true', help='render the plain HTML site even when Quarto is installed')
    ap.add_argument('--sidebar', action='store_true', help='only write nbs/sidebar.yml (after adding a notebook)')
    ap.add_argument('--process-one', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sidebar: return (NBS / 'sidebar.yml').write_text(sidebar_yml(), encoding='utf-8')
    if args.process_one:
        page = Path(args.process_one)
        return process_one(NBS / page, PROC / page, set(os.environ.get('LLM_LAB_DOCS_SKIP', 'slow gpu').split()))
    t0 = time.time()
    pages = select(args.nbs)
    times = process(pages, args.workers, args.force)
    if (PROC / 'index.ipynb').exists(): (ROOT / 'README.md').write_text(readme_from(PROC / 'index.ipynb'), encoding='utf-8')
    (PROC / 'docs-times.json').write_text(json.dumps({'pages_s': times, 'processing_s': round(time.time() - t0)}, indent=1))
    print(f'processed {len(pages)} page(s) into {PROC.relative_to(ROOT)}/ in {time.time() - t0:.0f} s, wrote nbs/sidebar.yml and README.md')
    if args.no_render: return
    quarto = shutil.which('quarto')
    if quarto and not args.plain:
        subprocess.run([quarto, 'render', '--no-cache'], cwd=PROC, check=True)
        shutil.rmtree(ROOT / '_docs', ignore_errors=True)
        shutil.move(str(PROC / '_docs'), str(ROOT / '_docs'))
        print('site rendered with Quarto into _docs/ (open _docs/index.html)')
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import site_html
    n = site_html.build(PROC, ROOT / '_docs')
    print(f'{"Quarto is not on PATH: " if not quarto else ""}plain HTML site of {n} page(s) rendered into _docs/ '
          f'(open _docs/index.html) in {time.time() - t0:.0f} s in all')


if __name__ == '__main__':
    main()
