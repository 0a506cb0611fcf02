"""The README is the user's manual: its Python example runs as printed, its links lead
somewhere, and it stays short enough to read in five minutes."""

import re
import subprocess
import sys

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_python_example_runs_and_finds_the_zebras(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert '".demo-library"' in code
    code = code.replace('".demo-library"', repr(str(tmp_path / "lib")))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.replace("\r", "\n").splitlines() if ln.strip() and "/" not in ln[:6]]
    first = next(ln for ln in lines if ln.startswith("1 "))
    assert first.endswith("000000113354.jpg")  # the demo's zebras, as the tour above it shows
    assert "broccoli" in lines[-2].lower() and lines[-1] == "5 0"


def test_links_lead_to_files_and_it_stays_short():
    links = re.findall(r"\]\(([^)#]+)", README)
    assert links and all((ROOT / link).exists() for link in links), links
    assert len(README.splitlines()) <= 170


def test_every_result_file_is_named_by_a_doc_or_a_test():
    """benchmarks/results/ holds what the docs cite: a result is named by its file name, or
    its stem (a .md names its .json and .png), or a pattern such as duplicates*.md."""
    from fnmatch import fnmatch

    text = "".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                                                             *(ROOT / "tests").glob("*.py")])
    names = set(re.findall(r"([\w.*-]+)\.(?:md|json|png)", text))
    results = [p for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_file()]
    unnamed = [p.name for p in results if not any(fnmatch(p.name.rsplit(".", 1)[0], n) for n in names)]
    assert results and unnamed == []
