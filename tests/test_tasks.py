"""llm_lab.tasks: determinism, the held-out split never overlapping training, checkers, keyword questions from the docs."""
import pytest

from llm_lab.tasks import (Task, TASK_KINDS, make_tasks, is_heldout, task_corpus, task_text, exact_match, keyword_questions,
                           normalize_answer)


def test_deterministic_and_seeded():
    assert make_tasks(40) == make_tasks(40)
    assert make_tasks(40, seed=1) != make_tasks(40)
    assert [t.kind for t in make_tasks(16)] == list(TASK_KINDS) * 2


def test_splits_never_overlap():
    train = {t.prompt for s in range(3) for t in make_tasks(800, 'train', seed=s, unique=False)}
    held = make_tasks(160, 'heldout')
    assert all(is_heldout(t.prompt) for t in held) and not any(is_heldout(p) for p in train)
    assert not train & {t.prompt for t in held}
    assert len({t.prompt for t in held}) == 160   # unique
    lines = {line.removeprefix('Q: ') for doc in task_corpus(50) for line in doc.splitlines()}
    assert not lines & {t.prompt for t in held}


def test_answers_are_correct():
    for t in make_tasks(400, seed=5, unique=False):
        assert t.check(t.answer) and t.check(f'  {t.answer} ')
        if t.kind == 'add':
            a, b = t.prompt.removeprefix('What is ').removesuffix('?').split(' + ')
            assert int(t.answer) == int(a) + int(b)
        if t.kind == 'sort': assert t.answer.split() == sorted(t.prompt.split(': ')[1].split())
        if t.kind == 'reverse': assert t.answer.split() == t.prompt.split(': ')[1].split()[::-1]
        if t.kind == 'count':
            word = t.prompt.split('does ')[1].split(' appear')[0]
            assert int(t.answer) == t.prompt.split(': ')[1].rstrip('?').split().count(word)


def test_checker_and_exact_match():
    t = Task('add', 'What is 2 + 3?', '5')
    assert t.check('5') and t.check(' 5\n') and not t.check('5.') and not t.check('05')
    assert normalize_answer(' a  b\n') == 'a b'
    assert exact_match(['5', '6'], [t, t]) == 0.5
    with pytest.raises(ValueError): exact_match(['5'], [t, t])


def test_keyword_questions_come_from_the_docs():
    qs = keyword_questions()
    assert len(qs) > 150
    about = [(q, a) for q, a in qs if q.startswith('Which keyword')]
    assert about and all('___' in q or a not in q.split('? ', 1)[1].split() for q, a in about)
    assert ('Is while a Python keyword?', 'yes') in qs and ('Is len a Python keyword?', 'no') in qs


def test_errors():
    with pytest.raises(ValueError, match='split'): make_tasks(3, 'test')
    with pytest.raises(ValueError, match='unknown task kinds'): make_tasks(3, kinds=['poetry'])
    with pytest.raises(ValueError, match='ask for fewer'): make_tasks(500, 'heldout', kinds=['multiply'])
    assert task_text(Task('add', 'What is 1 + 1?', '2')) == 'Q: What is 1 + 1?\nA: 2'


def test_keyword_pool_is_the_same_in_a_notebook_a_script_and_python_S(monkeypatch):
    "IPython adds names to builtins (display, get_ipython) and `python -S` lacks site's; the task pool must not see either."
    import builtins, os, subprocess, sys
    from llm_lab.tasks import keyword_questions
    plain = keyword_questions()
    monkeypatch.setattr(builtins, 'display', lambda *a: None, raising=False)
    monkeypatch.setattr(builtins, 'get_ipython', lambda: None, raising=False)
    assert keyword_questions() == plain
    code = 'from llm_lab.tasks import keyword_questions; print(len(keyword_questions()), hash(tuple(keyword_questions())))'
    env = {**os.environ, 'PYTHONHASHSEED': '0', 'PYTHONPATH': os.pathsep.join(p for p in sys.path if p)}  # -S: no site-packages
    outs = {subprocess.run([sys.executable, *flags, '-c', code], capture_output=True, text=True, check=True, env=env).stdout
            for flags in ([], ['-S'])}
    assert len(outs) == 1 and int(next(iter(outs)).split()[0]) == len(plain)
