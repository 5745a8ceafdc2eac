"""`make docs`: process the notebooks for the site with nbdev, write the sidebar and README.md, then
render the HTML site with Quarto when Quarto is installed.

Why not plain `nbdev_docs`? When Quarto is missing, nbdev 2's docs commands try to install it with
sudo and to pip-install the project. This script calls the same nbdev steps without that:
nbdev.yml from settings.ini, the doc-links index, `proc_nbs` (which runs each notebook's show_doc
cells), and then `quarto render` only if `quarto` is on PATH.
"""
import argparse, json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'


def section_title(folder: str) -> str:
    "'1_foundations' → 'Part 1 · Foundations'; '0_the_lab' → 'Part 0 · The lab'."
    num, _, name = folder.partition('_')
    return f'Part {num} · {name.replace("_", " ").capitalize()}' if num.isdigit() else folder.replace('_', ' ')


def course_pages() -> list:
    "The notebooks of the site, as paths relative to nbs/, in reading order."
    pages = [p.relative_to(NBS) for p in NBS.rglob('*.ipynb')
             if not any(s.startswith(('_', '.')) for s in p.relative_to(NBS).parts)]
    return sorted(pages, key=lambda p: (len(p.parts) > 1, str(p)))


def sidebar_yml() -> str:
    "sidebar.yml: index first, then one section per part folder (folders are the parts of the course map)."
    lines = ['website:', '  sidebar:', '    contents:']
    current = None
    for page in course_pages():
        if len(page.parts) == 1:
            lines.append(f'      - {page.as_posix()}'); continue
        if page.parts[0] != current:
            current = page.parts[0]
            lines += [f'      - section: "{section_title(current)}"', '        contents:']
        lines.append(f'          - {page.as_posix()}')
    return '\n'.join(lines) + '\n'


def readme_from(processed_index: Path) -> str:
    "GitHub-flavoured markdown from the processed index notebook (what Quarto's gfm output contains)."
    import yaml
    nb = json.loads(processed_index.read_text())
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
            for o in cell.get('outputs', []):
                text = ''.join(o.get('text', '') or o.get('data', {}).get('text/plain', ''))
                if text.strip(): out.append('```\n' + text.rstrip() + '\n```')
    return '\n\n'.join(out).strip() + '\n'


def process(n_workers: int) -> Path:
    "Run nbdev's processing steps (no Quarto needed); return the folder of processed notebooks."
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.doclinks import _build_modidx
    from nbdev.serve import proc_nbs
    refresh_quarto_yml()                      # nbs/nbdev.yml from settings.ini (nbs/_quarto.yml links to ../_quarto.yml)
    _build_modidx()                           # llm_lab/_modidx.py: the index behind doc links
    (NBS / 'sidebar.yml').write_text(sidebar_yml())
    return proc_nbs(NBS, n_workers=n_workers)  # executes show_doc cells, applies nbdev's filters


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--no-render', action='store_true', help='stop after processing (what the tests check)')
    args = ap.parse_args()
    cache = process(args.workers)
    missing = [str(p) for p in course_pages() if not (cache / p).exists()]
    if missing: sys.exit(f'processing failed for: {", ".join(missing)}')
    (ROOT / 'README.md').write_text(readme_from(cache / 'index.ipynb'))
    print(f'processed {len(course_pages())} pages into {cache.relative_to(ROOT)}/, wrote nbs/sidebar.yml and README.md')
    if args.no_render: return
    quarto = shutil.which('quarto')
    if quarto is None:
        print('Quarto is needed to render the HTML site and is not on PATH. Install it from https://quarto.org/docs/get-started/ '
              '(a .deb/.pkg/.msi or tarball; no sudo needed for the tarball), then run `make docs` again.')
        return
    subprocess.run([quarto, 'render', '--no-cache'], cwd=cache, check=True)
    shutil.rmtree(ROOT / '_docs', ignore_errors=True)
    shutil.move(str(cache / '_docs'), str(ROOT / '_docs'))
    print(f'site rendered into _docs/ (open _docs/index.html)')


if __name__ == '__main__':
    main()
