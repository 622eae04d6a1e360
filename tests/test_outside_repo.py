"""Runs anywhere a user runs it: a chapter from the installed wheel in an empty folder, and a
chapter whose kernel died mid-training resumes and ends as an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ADLIB_PROGRESS")}
    env.update(MPLBACKEND="Agg", ADLIB_PROGRESS="summary", PYDEVD_DISABLE_FILE_VALIDATION="1", **extra)
    return env


def _outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts += [str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(texts)


@pytest.mark.slow
def test_a_chapter_runs_from_the_installed_wheel_in_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO)], check=True, timeout=300)
    wheel = next(wheels.glob("adlib-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # torch & co. come from this environment's site-packages (a plain path: its .pth files,
    # among them the checkout's editable install, are not processed); adlib from the wheel
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    where = subprocess.run([str(python), "-c", "import adlib; print(adlib.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True, env=_env()).stdout.strip()
    assert where.startswith(str(venv)), f"adlib imported from {where}, not from the wheel"

    empty = tmp_path / "colab"
    empty.mkdir()
    shutil.copy(REPO / "notebooks" / "05_rlr.ipynb", empty)
    started = time.perf_counter()
    done = subprocess.run([str(python), "-m", "papermill", "05_rlr.ipynb", "out.ipynb",
                           "-p", "profile", "smoke", "-p", "output_dir", "runs"],
                          cwd=empty, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = _outputs(empty / "out.ipynb")
    assert "adlib-verdict-box" in text and "Table 3 order" in text   # the paper's claims, checked
    assert "study (8 epochs" in text and "Residual+Self Att." in text   # the committed study table
    assert list((empty / "runs").glob("rlr__smoke__*.json"))
    print(f"outside-the-repo chapter 5 (smoke): {time.perf_counter() - started:.0f} s")


def _kernel_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (papermill's kernel)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def _papermill(out_dir: Path, out_nb: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "papermill",
                             str(REPO / "notebooks" / "01_cse_patch_svdd.ipynb"), str(out_nb),
                             "-p", "profile", "smoke", "-p", "epochs", "4",
                             "-p", "output_dir", str(out_dir)],
                            cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _record(folder: Path) -> dict:
    records = [json.loads(p.read_text()) for p in folder.glob("cse_patch_svdd__smoke__*.json")]
    assert len(records) == 1, records
    return records[0]


def _metrics(rows: list[dict]) -> list[tuple]:
    return sorted((r["ablation"], r["config"], r["seed"], r["category"], r["image_auroc"],
                   r["pixel_auroc"]) for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the kernel through /proc")
def test_a_chapter_killed_mid_training_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    plain = _papermill(tmp_path / "plain", tmp_path / "plain.ipynb", tmp_path)
    assert plain.wait(timeout=900) == 0

    killed = _papermill(tmp_path / "killed", tmp_path / "killed.ipynb", tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and not list((tmp_path / "killed").glob("checkpoints/**/last.pt")):
        time.sleep(0.05)
    kernels = _kernel_pids(killed.pid)
    assert kernels, "no kernel found under papermill"
    for pid in kernels:                      # the kernel dies mid-training (epoch 1 of 4 saved)
        os.kill(pid, signal.SIGKILL)
    assert killed.wait(timeout=300) != 0
    assert not list((tmp_path / "killed").glob("*.json")), "the killed run wrote no record"

    again = _papermill(tmp_path / "killed", tmp_path / "again.ipynb", tmp_path)
    assert again.wait(timeout=900) == 0
    assert "resumed from epoch" in _outputs(tmp_path / "again.ipynb")
    first, resumed = _record(tmp_path / "plain"), _record(tmp_path / "killed")
    assert resumed["metrics"] == first["metrics"]
    assert _metrics(resumed["ablations"]) == _metrics(first["ablations"])


def test_every_notebook_uses_the_one_repository_url():
    import re

    import yaml

    from adlib.book.builder import notebook_paths
    from adlib.resources import REPOSITORY_URL

    config = yaml.safe_load((REPO / "book" / "_config.yml").read_text())
    url, branch = config["repository"]["url"], config["repository"]["branch"]
    assert url == REPOSITORY_URL, "book/_config.yml and adlib.resources.REPOSITORY_URL differ"
    owner_repo = url.removeprefix("https://github.com/")
    for path in notebook_paths(REPO / "notebooks"):
        nb = nbformat.read(path, as_version=4)
        badge = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{path.name}"
        assert badge in nb.cells[0].source, f"{path.name}: Colab badge is not {badge}"
        install = next(c for c in nb.cells if c.cell_type == "code").source
        assert re.search(rf'url = "git\+{re.escape(url)}"', install), f"{path.name}: install cell"
        others = set(re.findall(r"github\.com/[\w.-]+/[\w.-]+", "".join(c.source for c in nb.cells)))
        assert others <= {f"github.com/{owner_repo}"}, f"{path.name} names another repository: {others}"


@pytest.mark.slow
def test_gpucheck_runs_its_code_path_on_the_cpu(tmp_path):
    from adlib.chapters.gpucheck import entries, gpucheck

    rows = gpucheck(tmp_path, device="cpu", tiny=True)
    expected = ["00 kNN baseline"] + [c.label for c in entries()]
    assert [r["chapter"] for r in rows] == expected
    for row in rows:
        assert row["train items/s"] > 0 and row["inference images/s"] > 0
        assert math.isfinite(row["estimated paper wall time (h)"]) and row["AMP"] == "off"
        assert row["host syncs / step"] is None and row["peak GPU memory (GiB)"] is None  # CPU
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    assert report["tiny"] and report["pretrained"] is False and len(report["rows"]) == len(expected)
    assert f"| {expected[-1]} |" in (tmp_path / "gpucheck.md").read_text()
