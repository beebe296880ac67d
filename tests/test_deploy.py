"""The container runs what the tests run: its entrypoint is `seqrec pipeline`, the extras it
installs exist, the files it copies are there (no container engine runs in CI)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_matches_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["seqrec", "pipeline"]' in text
    extras = re.search(r"ARG EXTRAS=(\S+)", text).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared)
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in copied.split():
            assert (ROOT / name).exists(), name
    assert re.search(r"ARG TORCH=torch==\d", text)  # pinned
    assert "deploy/README.md" in text and (ROOT / "deploy" / "README.md").exists()
