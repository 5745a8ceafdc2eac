"""The plain HTML site, for machines without Quarto: each processed notebook in _proc/ rendered with nbconvert's
HTML exporter into _docs/, with the course's sidebar (scripts/docs.py builds it from the folders of nbs/ and the
index's course map), links between chapters (.ipynb → .html) and to API entries (nbdev's doc links, which point at
the published site, made relative), and previous/next links in reading order.

Page names follow nbdev's doc links: nbs/1_foundations/01_neurons.ipynb → _docs/1_foundations/neurons.html.
A page missing from _proc/ (a partial build, `make docs NBS=...`) stays in the sidebar as plain text.
Widgets cannot run on a static page: their control is replaced by a note, and the static figure each chapter shows
beside its control is what the reader sees. Images are embedded in the pages (data: URIs); MathJax is loaded from
its CDN only on pages with math.
"""
import html, os, re, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs  # noqa: E402

from docs import WIDGET_MIME, WIDGET_NOTE  # noqa: E402  (also applied by docs.py; kept for older processed copies)
MATHJAX = ('<script>window.MathJax={tex:{inlineMath:[["$","$"],["\\\\(","\\\\)"]],processEscapes:true}};</script>\n'
           '<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>')

CSS = """
:root { --side: 19rem; --fg: #1f2328; --muted: #57606a; --line: #d0d7de; --accent: #2c6fbb; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
a { color: var(--accent); }
nav.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: var(--side); overflow-y: auto; padding: 1rem;
  border-right: 1px solid var(--line); background: #f6f8fa; font-size: 0.9rem; }
nav.sidebar .brand { font-weight: 700; font-size: 1.15rem; display: block; margin-bottom: .8rem; text-decoration: none; }
nav.sidebar ul { list-style: none; margin: 0; padding-left: 0; }
nav.sidebar ul ul { padding-left: 0.9rem; }
nav.sidebar li { margin: .15rem 0; }
nav.sidebar .part { font-weight: 600; margin-top: .9rem; color: var(--fg); }
nav.sidebar .current > a, nav.sidebar .current > span { font-weight: 700; }
nav.sidebar .planned, nav.sidebar .unbuilt { color: var(--muted); font-style: italic; }
nav.sidebar li.companion { font-size: 0.85rem; }
main { margin-left: var(--side); padding: 1.5rem 2.5rem 4rem; max-width: calc(var(--side) + 60rem); }
main h1.title { margin-top: 0; }
p.description { color: var(--muted); font-size: 1.1rem; }
.cell { margin: .9rem 0; }
.input_area, div.highlight { background: #f6f8fa; border-radius: 6px; }
div.highlight pre, .output_area pre { margin: 0; padding: .6rem .8rem; overflow-x: auto; font-size: 0.85rem; }
.output_area pre { background: #fff; border-left: 3px solid var(--line); }
.output_stderr pre { background: #fff5f5; }
.output_area img { max-width: 100%; height: auto; }
.prompt { display: none; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .25rem .55rem; }
.widget-note { color: var(--muted); font-style: italic; }
span.unbuilt { color: var(--muted); }
a.anchor-link { visibility: hidden; text-decoration: none; margin-left: .3rem; font-size: .8em; }
h1:hover > a.anchor-link, h2:hover > a.anchor-link, h3:hover > a.anchor-link, h4:hover > a.anchor-link { visibility: visible; }
.pager { display: flex; justify-content: space-between; border-top: 1px solid var(--line); margin-top: 3rem; padding-top: 1rem; }
@media (max-width: 900px) { nav.sidebar { position: static; width: auto; } main { margin-left: 0; padding: 1rem; } }
"""


def out_name(page) -> str:
    "'1_foundations/01_neurons.ipynb' → '1_foundations/neurons.html' (nbdev's doc-link names)."
    page = Path(page)
    return page.with_name(re.sub(r'^\d+[a-z]?_', '', page.stem) + '.html').as_posix()


def rel(target: str, from_page: str) -> str:
    "Relative URL from the HTML page `from_page` to `target` (both relative to the site root)."
    return os.path.relpath(target, os.path.dirname(from_page) or '.').replace(os.sep, '/')


def sidebar_html(tree: list, built: set, current: str) -> str:
    "The sidebar as nested lists; pages not built and planned chapters are plain text."
    def item(page, label, cls=''):
        klass = ' '.join(c for c in [cls, 'current' if page and out_name(page) == current else ''] if c)
        attr = f' class="{klass}"' if klass else ''
        if page is None: return f'<li{attr}><span class="planned">{html.escape(label)}</span>'
        if page.as_posix() not in built:
            return f'<li{attr}><span class="unbuilt" title="not built in this site">{html.escape(label)}</span>'
        return f'<li{attr}><a href="{rel(out_name(page), current)}">{html.escape(label)}</a>'
    out = [f'<a class="brand" href="{rel("index.html", current)}">llm_lab</a>', '<ul>']
    for kind, *rest in tree:
        if kind == 'page': out.append(item(rest[0], rest[1]) + '</li>'); continue
        title, items = rest
        out += [f'<li class="part">{html.escape(title)}<ul>']
        for entry in items:
            if entry[0] == 'planned': out.append(item(None, entry[2]) + '</li>')
            elif entry[0] == 'page': out.append(item(entry[1], entry[2]) + '</li>')
            else:
                out.append(item(entry[1], entry[2]))
                if entry[3]:
                    out.append('<ul>' + ''.join(item(p, l, 'companion') + '</li>' for _, p, l in entry[3]) + '</ul>')
                out.append('</li>')
        out.append('</ul></li>')
    return '\n'.join(out + ['</ul>'])


def reading_order(tree: list) -> list:
    "Pages in sidebar order (companions after their chapter)."
    order = []
    for kind, *rest in tree:
        if kind == 'page': order.append(rest[0]); continue
        for entry in rest[1]:
            if entry[0] in ('page', 'chapter'): order.append(entry[1])
            if entry[0] == 'chapter': order += [p for _, p, _ in entry[3]]
    return order


def prepare(nb) -> dict:
    "Take the front matter out of the processed notebook; apply Quarto's cell options the plain site needs."
    import yaml
    meta = {}
    cells = []
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == 'raw':
            if src.strip().startswith('---') and not meta: meta = yaml.safe_load(src.strip().strip('-')) or {}
            continue
        if cell.cell_type == 'code':
            opts = dict(re.findall(r'^#\|\s*([\w-]+):\s*(.*?)\s*$', src, re.M))
            cell.source = re.sub(r'^#\|.*\n?', '', src, flags=re.M)
            if opts.get('echo') == 'false' or opts.get('include') == 'false' or not cell.source.strip():
                cell.metadata.setdefault('transient', {})['remove_source'] = True
            if opts.get('output') == 'false' or opts.get('include') == 'false': cell.outputs = []
            if opts.get('include') == 'false': continue
            cell.outputs = [o for o in cell.get('outputs', []) if o.get('output_type') != 'stream' or o.get('text', '').strip()]
            for o in cell.outputs:
                if WIDGET_MIME in o.get('data', {}):
                    o['data'] = {'text/html': WIDGET_NOTE}
        cells.append(cell)
    nb.cells = cells
    return meta


def rewrite_links(body: str, page: str, built: set, doc_url: str) -> str:
    "Links to notebooks → their HTML pages (plain text when not built); nbdev's absolute doc links → relative ones."
    here, built_html = out_name(page), {out_name(p) for p in built}

    def fix(m):
        before, href, after, text = m.group(1), html.unescape(m.group(2)), m.group(3), m.group(4)
        url, _, frag = href.partition('#')
        if doc_url and url.startswith(doc_url):                    # an API entry on the published site
            target = url[len(doc_url):].lstrip('/') or 'index.html'
            if target not in built_html: return m.group(0)          # not built here: keep the published link
        elif url.endswith('.ipynb') and not re.match(r'\w+:', url):  # a link to another notebook
            dest = os.path.normpath(os.path.join(os.path.dirname(page), url)).replace(os.sep, '/')
            if dest not in built: return f'<span class="unbuilt" title="not built in this site">{text}</span>'
            target = out_name(dest)
        else:
            return m.group(0)
        new = rel(target, here) + (f'#{frag}' if frag else '')
        return f'<a{before}href="{html.escape(new)}"{after}>{text}</a>'

    return re.sub(r'<a\b([^>]*?)href="([^"]*)"([^>]*)>(.*?)</a>', fix, body, flags=re.S)


def build(proc: Path, out: Path) -> int:
    "Render every processed notebook under `proc` into `out`; return the number of pages."
    import nbformat, shutil, warnings
    warnings.filterwarnings('ignore', message='Cell is missing an id field')  # nbdev's inserted show_doc cells
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter
    from nbdev.config import get_config
    cfg = get_config()
    doc_url = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/'
    pages = sorted(p.relative_to(proc).as_posix() for p in proc.rglob('*.ipynb')
                   if not any(s.startswith(('_', '.')) for s in p.relative_to(proc).parts))
    built = set(pages)
    tree = docs.sidebar_entries()
    order = [p.as_posix() for p in reading_order(tree) if p.as_posix() in built]
    order += [p for p in pages if p not in order]
    titles = {}
    exporter = HTMLExporter(template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True)
    css = CSS + HtmlFormatter(style='default').get_style_defs('.highlight')
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / 'site.css').write_text(css, encoding='utf-8')
    (out / '.nojekyll').write_text('')
    rendered = {}
    for page in pages:
        nb = nbformat.read(proc / page, as_version=4)
        meta = prepare(nb)
        titles[page] = meta.get('title') or docs.notebook_title(proc / page)
        body, _ = exporter.from_notebook_node(nb)
        body = re.sub(r'(?s)^.*?<body[^>]*>|</body>.*$', '', body)
        rendered[page] = (meta, body)
    for i, page in enumerate(order):
        meta, body = rendered[page]
        here = out_name(page)
        body = rewrite_links(body, page, built, doc_url)
        math = MATHJAX if re.search(r'\$[^$\s][^$]*\$|\\\(|\\\[|\$\$', body) else ''
        pager = ['<nav class="pager">']
        pager.append(f'<a rel="prev" href="{rel(out_name(order[i - 1]), here)}">← {html.escape(titles[order[i - 1]])}</a>'
                     if i > 0 else '<span></span>')
        if i + 1 < len(order):
            pager.append(f'<a rel="next" href="{rel(out_name(order[i + 1]), here)}">{html.escape(titles[order[i + 1]])} →</a>')
        pager.append('</nav>')
        desc = f'<p class="description">{html.escape(str(meta["description"]))}</p>' if meta.get('description') else ''
        doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(titles[page])} – llm_lab</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{rel('site.css', here)}">
{math}
</head><body>
<nav class="sidebar">{sidebar_html(tree, built, here)}</nav>
<main>
<h1 class="title">{html.escape(titles[page])}</h1>
{desc}
{body}
{''.join(pager)}
</main></body></html>
"""
        (out / here).parent.mkdir(parents=True, exist_ok=True)
        (out / here).write_text(doc, encoding='utf-8')
    return len(order)


if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    print(f'{build(root / "_proc", root / "_docs")} pages rendered into _docs/')
