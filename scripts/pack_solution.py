"""Build an assignment pack's reference solution from the chapter solutions, so that each solution exists once.

    python scripts/pack_solution.py gpt-from-parts --out gpt_from_parts_solution.py
    llm-lab check gpt-from-parts gpt_from_parts_solution.py        # full marks

Each function a pack's parts ask for (`llm_lab.grading.PACKS`) is copied, with the helpers, constants and imports it
uses, from the one solution file that defines it at top level: a chapter's `solutions/NN_*.py`, or, for a function
that no chapter solves, `solutions/assignments/*.py`. The result is one self-contained file, like the one a student
hands in. Nothing is hand-copied, so a fix to a chapter solution reaches every pack.
"""
from __future__ import annotations

import argparse, ast, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Solution:
    "One solution file, parsed: which top-level statement binds each name."
    def __init__(self, path: Path):
        self.path, self.text = path, path.read_text()
        self.lines = self.text.splitlines()
        self.tree = ast.parse(self.text, filename=str(path))
        self.defs: dict[str, ast.stmt] = {}       # name -> the def, class or assignment that binds it
        self.imports: dict[str, tuple] = {}       # name -> (module or None, imported name, asname) of its import
        self.future = False                       # `from __future__ import annotations`
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): self.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name): self.defs[n.id] = node
            elif isinstance(node, ast.ImportFrom) and node.module == '__future__': self.future = True
            elif isinstance(node, ast.ImportFrom):
                for a in node.names: self.imports[a.asname or a.name] = ('.' * node.level + (node.module or ''), a.name, a.asname)
            elif isinstance(node, ast.Import):
                for a in node.names: self.imports[a.asname or a.name.split('.')[0]] = (None, a.name, a.asname)

    def closure(self, names) -> set[str]:
        "`names` and every top-level name of this file that they use, transitively (local names may add a few: harmless)."
        todo, seen = list(names), set()
        while todo:
            name = todo.pop()
            if name in seen or name not in self.defs: continue
            seen.add(name)
            todo += [n.id for n in ast.walk(self.defs[name]) if isinstance(n, ast.Name)]
        return seen

    def source(self, node: ast.stmt) -> str:
        "The statement's text with its decorators and the comment lines right above it."
        start = min([node.lineno] + [d.lineno for d in getattr(node, 'decorator_list', [])]) - 1
        while start > 0 and self.lines[start - 1].lstrip().startswith('#'): start -= 1
        return '\n'.join(self.lines[start:node.end_lineno])


def solution_files(solutions: Path) -> list[Path]:
    "Where functions are looked up: the chapter solutions, then the pack-only ones."
    return sorted(solutions.glob('[0-9]*.py')) + sorted((solutions / 'assignments').glob('*.py'))


def _import_line(module, name, asname) -> str:
    alias = name + (f' as {asname}' if asname else '')
    return f'import {alias}' if module is None else f'from {module} import {alias}'


def _group(lines) -> list[str]:
    "`import` lines first, then one `from M import a, b` line per module."
    plain = sorted(l for l in lines if l.startswith('import '))
    froms = {}
    for l in lines:
        if l.startswith('from '): module, alias = l[5:].split(' import '); froms.setdefault(module, []).append(alias)
    return plain + [f"from {m} import {', '.join(sorted(a))}" for m, a in sorted(froms.items())]


def _owners(wanted: list[str], files: list[Solution], solutions: Path) -> dict:
    "function name -> the one solution file that defines it; an error when none or several do."
    owner = {}
    for f in wanted:
        found = [s for s in files if f in s.defs]
        if not found: raise ValueError(f"the pack needs {f!r}, but no solution file in {solutions} defines it at top level "
                                       f"(a chapter's NN_*.py, or assignments/*.py for a function only a pack uses)")
        if len(found) > 1: raise ValueError(f"{f!r} is defined in {[s.path.name for s in found]}: keep one copy")
        owner[f] = found[0]
    return owner


def _take(s: Solution, names: set, bound: dict, imports: dict) -> list[ast.stmt]:
    "The statements of `s` that bind `names`, in file order; their imports go into `imports`, every name into `bound`."
    refs = {n.id for name in names for n in ast.walk(s.defs[name]) if isinstance(n, ast.Name)}
    for name in sorted(refs & s.imports.keys()):
        line = _import_line(*s.imports[name])
        if bound.setdefault(name, line) != line:
            raise ValueError(f"{name!r} is imported as {line!r} in {s.path.name}, as {bound[name]!r} in an earlier file")
        imports[line] = True
    for name in sorted(names):
        code = ast.unparse(s.defs[name])
        if name not in bound: bound[name] = code
        elif bound[name] == code: names = names - {name}     # the same helper, already taken from an earlier file
        else: raise ValueError(f"{name!r} means different things in {s.path.name} and an earlier solution file: rename one")
    return sorted({id(s.defs[n]): s.defs[n] for n in names}.values(), key=lambda node: node.lineno)


def pack_source(pack, # a pack of llm_lab.grading or its name
                solutions: Path = ROOT / 'solutions', # the folder of NN_*.py chapter solutions (and assignments/)
               ) -> str:
    "The text of `pack`'s reference solution: every function its parts need, taken from the solution that defines it."
    from llm_lab.grading import get_pack
    pack, solutions = (get_pack(pack) if isinstance(pack, str) else pack), Path(solutions)
    wanted = list(dict.fromkeys(f for part in pack.parts for f in part.functions))
    files = [Solution(p) for p in solution_files(solutions)]
    owner = _owners(wanted, files, solutions)
    bound, imports, blocks = {}, {}, []          # name -> its import line or code; import lines (an ordered set)
    for s in [s for s in files if s in owner.values()]:
        nodes = _take(s, s.closure(f for f in wanted if owner[f] is s), bound, imports)
        blocks.append(f'# ---- from {s.path.relative_to(solutions.parent).as_posix()}\n' + '\n\n\n'.join(s.source(n) for n in nodes))
    future = any(s.future for s in files if s in owner.values())
    head = [f'"""Reference solution of the {pack.name!r} pack, built by scripts/pack_solution.py from the chapter solutions: '
            f'edit those, not this file.\n`llm-lab check {pack.name} THIS_FILE` gives it full marks."""']
    head += ['from __future__ import annotations'] * future + _group(imports)
    text = '\n'.join(head) + '\n\n\n' + '\n\n\n'.join(blocks) + '\n'
    compile(text, f'<{pack.name} reference>', 'exec')   # a broken extraction fails here, not in the grader
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('pack', help="the pack's name, as `llm-lab check --list` shows it")
    p.add_argument('--out', help='write the file here (default: standard output)')
    args = p.parse_args(argv)
    try: text = pack_source(args.pack)
    except ValueError as e: print(f'pack_solution: error: {e}', file=sys.stderr); return 2
    if args.out: Path(args.out).write_text(text)
    else: sys.stdout.write(text)
    return 0


if __name__ == '__main__': sys.exit(main())
