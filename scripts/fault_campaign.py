"""Bad inputs and injected faults against the CLI, as a user meets them.

    SSL_RUNNER_DATA=../shared/data python scripts/fault_campaign.py [--only NAME ...]

Each bad input must end with exit status 2 (or the status named), one
"error:" paragraph, no traceback, and no run folder left behind when the run
never started. Each fault (a SIGKILL at some point of a run, a damaged
checkpoint) must be survived: rerunning the same command ends with exit 0
and a summary.json whose figures equal those of an uninterrupted run.
Prints one line per case and a final count; exits 1 if any case failed.
The tests cover the same ground with assertions (tests/test_run_safety.py,
test_resume.py, test_image_folder_faults.py, test_cli.py); this is the
wider sweep, about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from PIL import Image

DATA = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")).resolve()
TINY = ["method=simclr", "experiment=smoke", "data.subset=256", "data.test_subset=128", "data.batch_size=64",
        "trainer.max_epochs=3", "eval.linear.epochs=4", "eval.random_baseline=false"]
ATTEMPT_FIELDS = {"seconds", "seconds_to_first_step", "resumed_from", "checkpoint", "encoder_checkpoint"}


def run(args: List[str], run_dir: Path, env: Optional[Dict[str, str]] = None,
        kill_when: Optional[str] = None) -> subprocess.CompletedProcess:
    """The CLI in `run_dir`; with `kill_when`, SIGKILLed (all ranks) as soon as run_dir/kill_when exists."""
    full_env = {**os.environ, "SSL_RUNNER_DATA": str(DATA), "CI": "true", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "ssl_runner", *args, f"hydra.run.dir={run_dir}"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kill_when:
        while proc.poll() is None and not (run_dir / kill_when).exists():
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def figures(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {name: {k: v for k, v in record.items() if k not in ATTEMPT_FIELDS}
            for section in ("stages", "baseline") for name, record in summary[section].items()}


def image_tree(root: Path, classes=("cat", "dog"), count: int = 12) -> Path:
    for split, n in (("train", count), ("test", count // 2)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for src in sorted((DATA / "cifar10" / "train" / name).iterdir())[:n]:
                shutil.copy(src, root / split / name / src.name)
    return root


def truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.open(next((DATA / "cifar10" / "train" / "cat").iterdir())).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:60])


# ---- bad inputs: (name, arguments, set-up of the work folder or None, expected exit status) ----------------

def _tree_with(fix: Callable[[Path], None]) -> Callable[[Path], List[str]]:
    def setup(work: Path) -> List[str]:
        root = image_tree(work / "data")
        fix(root)
        return ["data=imagefolder", f"data.root={root}", "data.batch_size=8"]
    return setup


def _file(content: bytes) -> Callable[[Path], List[str]]:
    def setup(work: Path) -> List[str]:
        (work / "file.pt").write_bytes(content)
        return ["pipeline=eval", f"checkpoint={work / 'file.pt'}"]
    return setup


class _Pickled:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fault_campaign_code_ran",))


def _mixed_sizes(root: Path) -> None:
    for i, path in enumerate(sorted(root.rglob("*.jpg"))):
        Image.open(path).resize((24 + 8 * (i % 3),) * 2).save(path)


BAD_INPUTS = [
    ("unknown method", ["method=nosuch"], None, 2),
    ("unknown experiment", ["experiment=nosuch"], None, 2),
    ("misspelt key", ["optimizer.lrr=0.1"], None, 2),
    ("misspelt group", ["methdo=simclr"], None, 2),
    ("misspelt key with +", ["+data.subsett=10"], None, 2),
    ("wrong type", ["seed=abc"], None, 2),
    ("batch size 0", ["data.batch_size=0"], None, 2),
    ("negative batch size", ["data.batch_size=-5"], None, 2),
    ("zero epochs", ["trainer.max_epochs=0"], None, 2),
    ("image size 0", ["data.image_size=0"], None, 2),
    ("batch larger than the data", ["data.subset=40", "data.batch_size=64"], None, 2),
    ("unknown optimizer", ["optimizer=nosuch"], None, 2),
    ("unknown stage", ["pipeline.stages=[pretrain,nosuch]"], None, 2),
    ("views_on choice", ["data.views_on=gpu"], None, 2),
    ("feature layer", ["eval.feature_layer=layer9"], None, 2),
    ("backbone width 0", ["backbone.width=0"], None, 2),
    ("two-value mean", ["data.mean=[0.5,0.5]"], None, 2),
    ("milestones decreasing", ["scheduler.milestones=[10,5]"], None, 2),
    ("nesterov with adamw", ["optimizer=adamw", "optimizer.nesterov=true"], None, 2),
    ("GPU on a CPU machine", ["trainer.accelerator=gpu"], None, 2),
    ("devices not a number", ["trainer.devices=abc"], None, 2),
    ("global batch indivisible", ["trainer=ddp_cpu", "data.global_batch_size=129"], None, 2),
    ("nodes without a launcher", ["trainer=ddp_cpu", "trainer.num_nodes=2"], None, 2),
    ("linear_concat for simclr", ["pipeline.stages=[pretrain,knn,linear,linear_concat]", "trainer.max_epochs=1"],
     None, 2),
    ("eval without a checkpoint", ["pipeline=eval"], None, 2),
    ("eval of a missing file", ["pipeline=eval", "checkpoint=/nonexistent/encoder.pt"], None, 2),
    ("eval of a text file", [], _file(b"not a checkpoint"), 2),
    ("eval of a planted pickle", [], None, 2),  # set up below (needs pickle)
    ("missing data set", ["data=imagefolder", "data.root=/nonexistent"], None, 2),
    ("empty train folder", [], _tree_with(lambda r: [shutil.rmtree(d) for d in (r / "train").iterdir()]), 2),
    ("test class unknown to train", [], _tree_with(lambda r: image_tree(r, classes=("cat", "dog", "frog"))
                                                   and shutil.rmtree(r / "train" / "frog")), 2),
    ("empty class folder in train", [], _tree_with(lambda r: (r / "train" / "zebra").mkdir()), 2),
    ("zero-byte image, per item", ["data.in_memory=false", "data.views_on=cpu"],
     _tree_with(lambda r: (r / "train" / "cat" / "empty.png").write_bytes(b"")), 2),
    ("text named .png, in memory", [], _tree_with(lambda r: (r / "train" / "cat" / "x.png").write_text("hi")), 2),
    ("image cut after its header, in a worker", ["data.in_memory=false", "data.views_on=cpu", "data.num_workers=2"],
     _tree_with(lambda r: truncated_png(r / "train" / "dog" / "cut.png")), 2),
    ("mixed sizes in memory", ["data.in_memory=true", "data.views_on=device"], _tree_with(_mixed_sizes), 2),
    ("no test split", [], _tree_with(lambda r: shutil.rmtree(r / "test")), 2),
]


def check_bad_input(name: str, args: List[str], setup, expected: int, work: Path) -> Optional[str]:
    if name == "eval of a planted pickle":
        import pickle

        setup = _file(pickle.dumps({"format": "x", "payload": _Pickled()}))
    extra = setup(work) if setup else []
    marker = Path("/tmp/fault_campaign_code_ran")
    marker.unlink(missing_ok=True)
    run_dir = work / "run"
    proc = run([*TINY, *args, *extra], run_dir)
    problems = []
    if proc.returncode != expected:
        problems.append(f"exit {proc.returncode}, expected {expected}")
    if "error:" not in proc.stderr or "Traceback" in proc.stderr:
        problems.append("no one-paragraph error" + (" (a traceback)" if "Traceback" in proc.stderr else ""))
    if run_dir.exists() and not (run_dir / "manifest.json").exists():
        problems.append(f"left {sorted(p.name for p in run_dir.iterdir())} behind")
    if marker.exists():
        problems.append("a pickle ran code")
    return "; ".join(problems) or None


# ---- faults: each leaves a run folder that the same command must finish, equal to the uninterrupted run ---

def _kill_when(path: str, extra: List[str] = ()):
    def inject(run_dir: Path, args: List[str]) -> None:
        proc = run([*args, *extra], run_dir, kill_when=path)
        if proc.returncode != -9:
            raise RuntimeError(f"the run ended ({proc.returncode}) before {path} appeared")
    return inject


def _damage_checkpoint(how: str):
    def inject(run_dir: Path, args: List[str]) -> None:
        _kill_when("pretrain/checkpoints/last.ckpt")(run_dir, args)
        ckpt = run_dir / "pretrain/checkpoints/last.ckpt"
        if how == "truncate":
            ckpt.write_bytes(ckpt.read_bytes()[:1000])
        elif how == "empty":
            ckpt.write_bytes(b"")
        else:
            import pickle

            ckpt.write_bytes(pickle.dumps({"state_dict": _Pickled(), "epoch": 0}))
        (ckpt.parent / ".last.ckpt.tmp.1").write_bytes(b"half a file")
    return inject


def _second_run_while_busy(run_dir: Path, args: List[str]) -> None:
    full_env = {**os.environ, "SSL_RUNNER_DATA": str(DATA), "CI": "true"}
    first = subprocess.Popen([sys.executable, "-m", "ssl_runner", *args, f"hydra.run.dir={run_dir}"], env=full_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while first.poll() is None and not (run_dir / "pretrain/checkpoints/last.ckpt").exists():
        time.sleep(0.01)
    second = run(args, run_dir)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    if second.returncode != 2 or "in use by another" not in " ".join(second.stderr.split()):
        raise RuntimeError(f"the second run was not refused ({second.returncode})")


FAULTS = [
    ("SIGKILL in pretraining epoch 2", _kill_when("pretrain/checkpoints/last.ckpt"), []),
    ("SIGKILL in the kNN stage", _kill_when("knn"), []),
    ("SIGKILL in the linear probe", _kill_when("linear/checkpoints/last.ckpt"), []),
    ("SIGKILL after pretraining, before kNN", _kill_when("pretrain/encoder.pt"), []),
    ("SIGKILL in pretraining, 2 processes", _kill_when("pretrain/checkpoints/last.ckpt"), ["trainer=ddp_cpu"]),
    ("SIGKILL in the linear probe on images, 2 processes", _kill_when("linear/checkpoints/last.ckpt"),
     ["trainer=ddp_cpu", "eval.linear.augment=true"]),
    ("SIGKILL in pretraining, views in 2 workers", _kill_when("pretrain/checkpoints/last.ckpt"),
     ["data.in_memory=false", "data.views_on=cpu", "data.num_workers=2"]),
    ("truncated last.ckpt", _damage_checkpoint("truncate"), []),
    ("empty last.ckpt", _damage_checkpoint("empty"), []),
    ("planted pickle as last.ckpt", _damage_checkpoint("pickle"), []),
    ("a second run in a busy folder, then SIGKILL", _second_run_while_busy, []),
]


def check_fault(name: str, inject, extra: List[str], work: Path, references: Dict[str, dict]) -> Optional[str]:
    args = [*TINY, *extra]
    key = " ".join(extra)
    if key not in references:
        reference = work / "reference"
        proc = run(args, reference)
        if proc.returncode != 0:
            return f"the uninterrupted run failed: {proc.stderr[-500:]}"
        references[key] = figures(reference)
    run_dir = work / "run"
    inject(run_dir, args)
    proc = run(args, run_dir)
    if proc.returncode != 0:
        return f"the rerun exited {proc.returncode}: {proc.stderr[-800:]}"
    if figures(run_dir) != references[key]:
        return "the resumed figures differ from the uninterrupted run's"
    if [p for p in run_dir.rglob("*") if ".tmp." in p.name]:
        return "temporary files left behind"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the cases whose names contain one of these")
    wanted = parser.parse_args().only
    selected = lambda name: not wanted or any(w in name for w in wanted)  # noqa: E731
    failures, count = [], 0
    references: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args, setup, expected in BAD_INPUTS:
            if selected(name):
                work = Path(tempfile.mkdtemp(dir=tmp))
                problem = check_bad_input(name, args, setup, expected, work)
                count += 1
                print(f"bad input  {'FAILED' if problem else 'handled':8} {name}" + (f": {problem}" if problem else ""))
                failures += [name] if problem else []
        for name, inject, extra in FAULTS:
            if selected(name):
                work = Path(tempfile.mkdtemp(dir=tmp))
                try:
                    problem = check_fault(name, inject, extra, work, references)
                except RuntimeError as err:
                    problem = f"could not inject: {err}"
                count += 1
                print(f"fault      {'FAILED' if problem else 'survived':8} {name}" + (f": {problem}" if problem else ""))
                failures += [name] if problem else []
    print(f"{count - len(failures)} of {count} cases handled" + (f"; failed: {', '.join(failures)}" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
