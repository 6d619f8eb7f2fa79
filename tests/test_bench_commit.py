"""bench/commit.py: the commit a benchmark result names, for a checkout of the tree and for
a copy of it (the tree sent to the GPU machine has no .git, or sits inside another one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import load_bench

commit = load_bench("commit")
REPO = Path(__file__).resolve().parent.parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("AIOLLM_COMMIT", raising=False)
    monkeypatch.delenv("BENCH_COMMIT", raising=False)


def copy_of_bench(dest: Path) -> Path:
    (dest / "bench").mkdir(parents=True)
    shutil.copy(REPO / "bench" / "commit.py", dest / "bench" / "commit.py")
    return dest


def test_a_checkout_names_its_head():
    assert commit.tree_commit(REPO) == git(REPO, "rev-parse", "--short", "HEAD")


def test_a_copy_without_git_is_unknown(tmp_path):
    assert commit.tree_commit(copy_of_bench(tmp_path / "copy")) == "unknown"


def test_a_copy_inside_another_repository_does_not_take_its_head(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    git(outer, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
        "-m", "outer")
    assert commit.tree_commit(copy_of_bench(outer / ".gpu-x")) == "unknown"


def test_the_environment_names_the_commit_of_a_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOLLM_COMMIT", "abc1234")
    assert commit.tree_commit(copy_of_bench(tmp_path / "copy")) == "abc1234"
    assert commit.tree_commit(REPO) == "abc1234"


def test_a_checkout_with_changed_files_is_dirty_when_asked(tmp_path):
    repo = copy_of_bench(tmp_path / "repo")
    git(repo, "init", "-q")
    git(repo, "add", "bench/commit.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = git(repo, "rev-parse", "--short", "HEAD")
    assert commit.tree_commit(repo, dirty=True) == head
    (repo / "bench" / "commit.py").write_text("# changed\n")
    assert commit.tree_commit(repo, dirty=True) == head + "-dirty"
    assert commit.tree_commit(repo) == head
