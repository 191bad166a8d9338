"""README.md and docs/: every relative link resolves, every Python example runs."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
PYTHON = re.compile(r'^```python\n(.*?)^```', re.S | re.M)


def anchors(page: pathlib.Path) -> set:
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
  headings = re.findall(r'^#+ (.*)$', page.read_text(), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_docs_exist_and_the_front_page_is_short():
  assert len(PAGES) >= 8
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 150


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(page.read_text()):
    if re.match(r'^[a-z]+:', target):  # http:, https:, mailto:
      continue
    path, _, anchor = target.partition('#')
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
      broken.append(f'{target}: no {linked}')
    elif anchor and (linked.suffix != '.md' or anchor not in anchors(linked)):
      broken.append(f'{target}: no heading #{anchor} in {linked.name}')
  assert not broken, broken


@pytest.mark.parametrize('page', [p for p in PAGES if PYTHON.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, tmp_path):
  """Each page's Python blocks, in order, in one fresh process started in the repository."""
  script = '\n'.join(PYTHON.findall(page.read_text()))
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
