"""The GPU check: one command that proves the GPU path and measures it, made
to fit a lent GPU's minutes (about 9 on one H100 or H200, the wheels' install
included). One line per check, a summary line, and a JSON of every figure.

Here, before the GPU machine (it has no network, and lacks some packages):

    SSL_RUNNER_DATA=../shared/data python scripts/gpu_check.py prepare --to .gpucheck

copies the wheels that the GPU image lacks (GPU_IMAGE_LACKS), CIFAR-10's
JPEG tree and a folder of photographs (scripts/bench_imagefolder.py's, 128
JPEGs of 300-500 px) into `.gpucheck/` (about 60 MB; add `/.gpucheck/` to
`.git/info/exclude`). On the GPU machine, from the repository's root:

    python3 scripts/gpu_check.py --wheels .gpucheck/wheels --data .gpucheck/data \
        --photos .gpucheck/photos --out gpu_check.json

The checks, each in a process of its own, stopped at its share of the time:

1. `wheels`: installs the carried wheels into a folder of their own, no network;
2. `environment`: torch, the device, and that ssl_runner imports;
3. `cuda_tests`: `pytest -m cuda tests` (tests/test_cuda.py: views on the
   device against the CPU's, NT-Xent and InfoNCE under bf16 autocast against
   fp32, SyncBatchNorm's conversion, GlobalBatchNorm against SyncBatchNorm);
4. `ddp_sync_batchnorm`: `trainer=ddp` on one device with
   `trainer.sync_batchnorm=true` (NCCL), a two-epoch smoke run to its kNN;
5. `throughput`: steady-state images/s and GPU busy % of SimCLR ResNet-18 at
   batch 512 in bf16, views on the device, eager and `torch.compile`d, and
   lightly's SimCLR on the same GPU in the same run
   (`scripts/bench_train.py --side ...`, each in a fresh process);
6. `image_folder`: views of JPEG photographs at 224 px, images/s, made on
   the device from the files' bytes (`views_on=device`: nvJPEG's batched
   decode, data/encoded.py) against one CPU worker (`views_on=cpu`,
   data/crops.py), by `scripts/bench_imagefolder.py --side ...`;
7. `short_run`: `experiment=simclr_cifar10_fast` on all of CIFAR-10 for as
   many epochs as the remaining minutes hold: kNN top-1 and the time.

Without CUDA it runs a reduced form (tiny sizes, CPU, fp32; the CUDA-only
parts skipped with a line saying so), which the test suite runs so that the
script does not rot. The exit status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
# What the GPU machine's image lacks of what the check imports (its packages
# are listed in the device tool's KINDS.md): the config stack and the peer.
# omegaconf needs antlr4-python3-runtime 4.9.*, published only as a source
# archive, so `prepare` builds its wheel here (pure Python).
GPU_IMAGE_LACKS = ("hydra-core", "omegaconf", "lightly")
BUILT_HERE = ("antlr4-python3-runtime",)
GPU_PYTHON = "3.12"  # the GPU image's python3 (KINDS.md)
# Sizes of the two forms: the measured one on a GPU, a reduced one on a CPU.
GPU_SIZES = {"batch": 512, "warmup": 15, "steps": 40, "backbone": "resnet18", "precision": "bf16-mixed"}
CPU_SIZES = {"batch": 32, "warmup": 1, "steps": 2, "backbone": "resnet_tiny", "precision": "32-true"}
# Seconds the short run needs besides its epochs: start-up, data into memory, the kNN stage.
SHORT_RUN_OVERHEAD_S = 60.0
# The photographs `prepare` carries for the image_folder check (about 5 MB: the carry holds 64 MiB).
PHOTOS = 128


def log(line: str) -> None:
    print(f"[gpu-check] {line}", flush=True)


def run(command: List[str], env: Dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """A child process, its output captured; a timeout is an exit status of 124."""
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return subprocess.CompletedProcess(command, 124, out, f"stopped after {timeout:.0f} s")


def tail(done: subprocess.CompletedProcess, lines: int = 3) -> str:
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


class Check:
    """A check's outcome: status pass / fail / skip, one line of detail, figures."""

    def __init__(self, status: str, detail: str, **figures: Any) -> None:
        self.status, self.detail, self.figures = status, detail, figures


class GpuCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        # The run folders and the wheels' site, removed at the end (made by `main`).
        self.work = Path(tempfile.gettempdir()) / f"gpu-check-{os.getpid()}"
        self.env = {**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"}
        paths = [str(REPO)] + ([str(self.work / "site")] if args.wheels else [])
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        if args.data:
            self.env["SSL_RUNNER_DATA"] = str(Path(args.data).resolve())
        self.cuda = self.has_lightly = False
        self.sizes = CPU_SIZES
        self.results: Dict[str, Dict[str, Any]] = {}
        self.device = "unknown"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def python(self, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
        return run([sys.executable, *arguments], self.env, timeout)

    # -- the checks, in order --------------------------------------------------------------
    def wheels(self) -> Check:
        if not self.args.wheels:
            return Check("skip", "no --wheels: the installed packages are used")
        wheel_files = sorted(str(p) for p in Path(self.args.wheels).glob("*.whl"))
        if not wheel_files:
            return Check("fail", f"no .whl file in {self.args.wheels}")
        done = self.python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--target", str(self.work / "site"), *wheel_files, timeout=120)
        names = [Path(w).name.split("-")[0] for w in wheel_files]
        return Check("pass" if done.returncode == 0 else "fail",
                     f"installed {', '.join(names)}" if done.returncode == 0 else tail(done), wheels=names)

    def environment(self) -> Check:
        probe = ("import json, torch, lightning, hydra, ssl_runner, platform\n"
                 "from ssl_runner.run_dir import cpu_model\n"
                 "cuda = torch.cuda.is_available()\n"
                 "try:\n    import lightly; peer = lightly.__version__\nexcept ImportError:\n    peer = None\n"
                 "print(json.dumps({'torch': torch.__version__, 'lightning': lightning.__version__,\n"
                 "  'hydra': hydra.__version__, 'lightly': peer, 'cuda': cuda, 'cpu': cpu_model(),\n"
                 "  'python': platform.python_version(),\n"
                 "  'device': torch.cuda.get_device_name(0) if cuda else 'cpu',\n"
                 "  'capability': '.'.join(map(str, torch.cuda.get_device_capability(0))) if cuda else None}))\n")
        done = self.python("-c", probe, timeout=120)
        if done.returncode != 0:
            return Check("fail", f"the project does not import: {tail(done)}")
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        self.has_lightly = facts["lightly"] is not None
        self.cuda = bool(facts["cuda"]) and not self.args.cpu
        self.sizes = GPU_SIZES if self.cuda else CPU_SIZES
        self.device = facts["device"] if self.cuda else f"CPU ({facts['cpu']})"
        form = "the measured GPU form" if self.cuda else (
            "no CUDA device: the reduced CPU form (tiny sizes, fp32); the CUDA-only parts are skipped")
        return Check("pass", f"{self.device}, torch {facts['torch']}, lightning {facts['lightning']}, "
                     f"lightly {facts['lightly']}; {form}", **facts)

    def cuda_tests(self) -> Check:
        if not self.cuda:
            return Check("skip", "no CUDA device: `pytest -m cuda` needs one (the tests' CPU twins run in the suite)")
        done = self.python("-m", "pytest", "-m", "cuda", "tests", "-q", "-p", "no:cacheprovider",
                           timeout=min(150, self.left()))
        last = (done.stdout.strip().splitlines() or [""])[-1]
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", last)}
        ok = done.returncode == 0 and counts.get("passed", 0) > 0
        return Check("pass" if ok else "fail", last if ok else tail(done, 8), **counts)

    def ddp_sync_batchnorm(self) -> Check:
        run_dir = self.work / "ddp"
        command = ["-m", "ssl_runner", "method=simclr", "experiment=smoke", "trainer=ddp", "trainer.devices=1",
                   "trainer.sync_batchnorm=true", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
        if not self.cuda:  # gloo and GlobalBatchNorm: the same launch and conversion, on the CPU
            command += ["trainer.accelerator=cpu", "trainer.precision=32-true", "data.subset=256",
                        "data.test_subset=128", "data.batch_size=64", "eval.random_baseline=false",
                        "pipeline.stages=[pretrain,knn]", "monitor.label_free=false"]
        done = self.python(*command, timeout=min(180, self.left()))
        summary = read_json(run_dir / "summary.json")
        knn = (summary.get("stages", {}).get("knn") or {}).get("top1")
        synchronised = (summary.get("stages", {}).get("pretrain") or {}).get("synchronised_batchnorm_layers")
        ok = done.returncode == 0 and summary.get("status") == "done" and knn is not None and bool(synchronised)
        backend = "NCCL, SyncBatchNorm" if self.cuda else "gloo, GlobalBatchNorm (the CPU's stand-in)"
        detail = (f"2 epochs, {backend} ({synchronised} layers): kNN top-1 {knn}" if ok else
                  f"exit {done.returncode}, {synchronised} synchronised BatchNorm layers: {tail(done)}")
        return Check("pass" if ok else "fail", detail, knn_top1=knn, synchronised_batchnorm_layers=synchronised,
                     seconds=summary.get("wall_seconds"))

    def throughput(self) -> Check:
        sizes = self.sizes
        accelerator = "gpu" if self.cuda else "cpu"
        base = ["scripts/bench_train.py", "--accelerator", accelerator, "--precision", sizes["precision"],
                "--batch", str(sizes["batch"]), "--warmup", str(sizes["warmup"]), "--steps", str(sizes["steps"]),
                "--backbone", sizes["backbone"]]
        workers = str(min(12, max((os.cpu_count() or 2) - 2, 0))) if self.cuda else "0"
        sides = {"ours": ["--side", "ours"], "ours_compiled": ["--side", "ours", "--compile"],
                 "lightly": ["--side", "peer", "--peer-workers", workers]}
        if not self.cuda:  # compiling takes minutes on a CPU and proves nothing there
            sides.pop("ours_compiled")
        figures: Dict[str, Any] = {"sizes": sizes}
        lines = []
        for name, extra in sides.items():
            if name == "lightly" and not self.has_lightly:
                lines.append("lightly not installed: its side skipped")
                continue
            done = self.python(*base, *extra, timeout=min(240, self.left() - 60))
            if done.returncode != 0:
                return Check("fail", f"{name}: exit {done.returncode}: {tail(done)}", **figures)
            figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
            busy = figures[name].get("gpu_busy_percent")
            lines.append(f"{name} {figures[name]['images_per_second']:,.0f} images/s"
                         + (f" (GPU busy {busy:.0f} %)" if busy is not None else ""))
        if "lightly" in figures:
            figures["ratio_vs_lightly"] = round(figures["ours"]["images_per_second"]
                                                / figures["lightly"]["images_per_second"], 2)
            lines.append(f"ratio ours/lightly {figures['ratio_vs_lightly']:.2f}")
        return Check("pass", f"{sizes['backbone']}, batch {sizes['batch']}, {sizes['precision']}: "
                     + "; ".join(lines), **figures)

    def image_folder(self) -> Check:
        photos = Path(self.args.photos) if self.args.photos else self.work / "photos"
        size = "224" if self.cuda else "32"
        if not (photos / "train").is_dir():  # the reduced form: 64 files cut here from the photographs at hand
            made = self.python("-c", "import sys; sys.path.insert(0, 'scripts'); from pathlib import Path; "
                               f"from bench_imagefolder import make_folder; make_folder(Path({str(photos)!r}), 64)",
                               timeout=min(60, self.left()))
            if made.returncode != 0:
                return Check("fail", f"could not make the photographs' folder: {tail(made)}")
        base = ["scripts/bench_imagefolder.py", "--folder", str(photos), "--size", size,
                "--min-seconds", "3" if self.cuda else "0.2"]
        sides = {"device": ["--side", "ours_device", "--device", "cuda" if self.cuda else "cpu"],
                 "cpu_worker": ["--side", "ours"]}
        figures: Dict[str, Any] = {"size": int(size), "files": len(list((photos / "train").rglob("*.jpg")))}
        for name, extra in sides.items():
            done = self.python(*base, *extra, timeout=min(120, self.left() - 30))
            if done.returncode != 0:
                return Check("fail", f"{name}: exit {done.returncode}: {tail(done)}", **figures)
            figures[f"{name}_images_per_second"] = json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"]
        figures["ratio_device_vs_cpu_worker"] = round(figures["device_images_per_second"]
                                                      / figures["cpu_worker_images_per_second"], 2)
        where = "on the GPU (nvJPEG)" if self.cuda else "views_on=device on the CPU"
        return Check("pass", f"{figures['files']} photographs at {size} px: {where} "
                     f"{figures['device_images_per_second']:,.0f} images/s; one CPU worker "
                     f"{figures['cpu_worker_images_per_second']:,.0f} images/s "
                     f"(ratio {figures['ratio_device_vs_cpu_worker']:.2f})", **figures)

    def short_run(self) -> Check:
        run_dir = self.work / "short"
        command = ["-m", "ssl_runner", "experiment=simclr_cifar10_fast", f"hydra.run.dir={run_dir}"]
        if self.cuda:
            measured = self.results.get("throughput", {}).get("figures", {}).get("ours", {})
            per_second = measured.get("images_per_second") or 5000.0
            # An epoch at the measured speed plus 15 % for what the bare bench leaves out.
            epoch_s = 50_000 / per_second * 1.15
            epochs = int((self.left() - SHORT_RUN_OVERHEAD_S - 30) // epoch_s)
            if epochs < 1:
                return Check("skip", f"{self.left():.0f} s left: too little for one epoch ({epoch_s:.0f} s) "
                             "and the kNN stage")
            command.append(f"trainer.max_epochs={min(epochs, 200)}")
        else:
            command += ["trainer=cpu", "trainer.precision=32-true", "backbone=resnet_tiny", "data.subset=256",
                        "data.test_subset=128", "data.batch_size=64", "trainer.max_epochs=1"]
        started = time.monotonic()
        done = self.python(*command, timeout=self.left() - 10)
        summary = read_json(run_dir / "summary.json")
        stages = summary.get("stages", {})
        knn = (stages.get("knn") or {}).get("top1")
        pretrain = stages.get("pretrain") or {}
        ok = done.returncode == 0 and summary.get("status") == "done" and knn is not None
        epochs_run = pretrain.get("epochs")
        figures = {"knn_top1": knn, "epochs": epochs_run, "pretrain_seconds": pretrain.get("seconds"),
                   "wall_seconds": round(time.monotonic() - started, 1), "command": "python -m ssl_runner "
                   + " ".join(c for c in command[2:] if not c.startswith("hydra.run.dir"))}
        if ok and pretrain.get("seconds"):
            images = 50_000 if self.cuda else 256
            figures["pretrain_images_per_second"] = round(images * (epochs_run or 1) / pretrain["seconds"], 1)
        detail = (f"{epochs_run} epochs: kNN top-1 {knn} % in {figures['wall_seconds']:.0f} s "
                  f"(pretraining {pretrain.get('seconds')} s)") if ok else f"exit {done.returncode}: {tail(done)}"
        return Check("pass" if ok else "fail", detail, **figures)

    # -- the run ---------------------------------------------------------------------------
    def main(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            return self._run_checks()
        finally:  # also when stopped by Ctrl-C or a bug: no folder left behind
            shutil.rmtree(self.work, ignore_errors=True)

    def _run_checks(self) -> int:
        checks: List[Callable[[], Check]] = [self.wheels, self.environment, self.cuda_tests,
                                             self.ddp_sync_batchnorm, self.throughput, self.image_folder,
                                             self.short_run]
        for check in checks:
            name = check.__name__
            if self.left() < 5 and name != "environment":
                outcome = Check("skip", "the time budget is spent", seconds=0.0)
            else:
                began = time.monotonic()
                try:
                    outcome = check()
                except Exception as error:  # a bug of this script: a failed check, the others still run
                    outcome = Check("fail", f"{type(error).__name__}: {error}")
                outcome.figures["seconds"] = outcome.figures.get("seconds") or round(time.monotonic() - began, 1)
            self.results[name] = {"status": outcome.status, "detail": outcome.detail, "figures": outcome.figures}
            log(f"{name}: {outcome.status.upper()} {outcome.detail} ({outcome.figures['seconds']:.0f} s)")
            if name == "environment" and outcome.status == "fail":
                break
        counts = {s: sum(r["status"] == s for r in self.results.values()) for s in ("pass", "fail", "skip")}
        total = time.monotonic() - self.started
        log(f"summary: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in "
            f"{total / 60:.1f} min on {self.device}" + (f"; figures in {self.args.out}" if self.args.out else ""))
        if self.args.out:
            write_json(Path(self.args.out), {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": self.device,
                                             "form": "gpu" if self.cuda else "cpu", "seconds": round(total, 1),
                                             "counts": counts, "checks": self.results})
        return 1 if counts["fail"] else 0


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Atomically, and never NaN (a failed figure is null)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


def prepare(target: Path) -> int:
    """Here, with network: the wheels the GPU image lacks, at the versions
    installed here, and CIFAR-10's JPEG tree, into `target`."""
    wheels = target / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={metadata.version(name)}" for name in GPU_IMAGE_LACKS]
    platforms = [a for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", GPU_PYTHON, "--implementation", "cp", *platforms, "-d", str(wheels), *pins],
                   check=True)
    built = [f"{name}=={metadata.version(name)}" for name in BUILT_HERE]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *built], check=True)
    source = Path(os.environ.get("SSL_RUNNER_DATA", "data")) / "cifar10"
    data = target / "data" / "cifar10"
    for split in ("train", "test"):
        if not (source / split).is_dir():
            log(f"{source / split} is missing: set SSL_RUNNER_DATA to the folder that holds cifar10/")
            return 2
        if not (data / split).is_dir():
            shutil.copytree(source / split, data / split)
    if not (target / "photos" / "train").is_dir():
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_imagefolder import make_folder

        make_folder(target / "photos", PHOTOS)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
    log(f"{target}: {len(list(wheels.glob('*.whl')))} wheels ({', '.join(pins + built)}), CIFAR-10 and {PHOTOS} "
        f"photographs, {size:.0f} MiB; keep it out of git (echo /{target.name}/ >> .git/info/exclude) and carry it")
    return 0


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("action", nargs="?", choices=["check", "prepare"], default="check")
    parser.add_argument("--to", type=Path, default=Path(".gpucheck"), help="prepare: where the carried files go")
    parser.add_argument("--wheels", help="a folder of wheels to install first (no network)")
    parser.add_argument("--data", help="the folder holding cifar10/ (default: $SSL_RUNNER_DATA)")
    parser.add_argument("--photos", help="a folder of photographs (train/<class>/*.jpg) for image_folder "
                                         "(default: 64 files made from the photographs at hand)")
    parser.add_argument("--out", help="where the JSON of the figures goes")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="seconds for every check together (default 540: 9 minutes)")
    parser.add_argument("--cpu", action="store_true", help="the reduced CPU form even where CUDA is available")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    sys.exit(prepare(arguments.to) if arguments.action == "prepare" else GpuCheck(arguments).main())
