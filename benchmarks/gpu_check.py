"""Everything kcomp does on a CUDA GPU, in one run of a few minutes: `bash benchmarks/gpu_check.sh`.

For each task (cls on `prep demo`, seg on the Clouds fixture, det on the SIIM fixture, ink on the Vesuvius fixture):
train 2 short epochs on both folds, oof, tta, submit; a 1-epoch training at each other `--amp` mode; `--deterministic`
for every task and every seg architecture; `--compile` for cls; the train and tta loops against the model-only
limit on this GPU (`bench_loop.py`); with 2+ GPUs, `--gpus 2` against one process and `--parallel-folds`. Every
command runs as a user would run it (a fresh `kcomp` process), and reports its peak GPU memory
(`torch.cuda.max_memory_allocated`) on the way out. One table is printed and appended to benchmarks/RESULTS.md with
the GPU's name; the exit code is 1 if any step did not end as expected.

`KCOMP_CHECK_DEVICE=cpu` runs the same steps on the CPU, as a dry run of the script itself: smaller data and
models (`SIZES`), `--amp fp16` expected to be refused, `--gpus 2` as two gloo processes, and the table only printed
(not appended to RESULTS.md: it measures nothing about a GPU). `KCOMP_CHECK_RESULTS=FILE` appends the table there.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STEP = [sys.executable, str(Path(__file__).resolve().parent / "_check_step.py")]
SEG_ARCHS = ("unet", "fpn", "pspnet", "linknet", "unetplusplus", "deeplabv3plus", "deeplabv3", "manet", "pan",
             "upernet")
# The check measures the GPU path, not the hub: the machines it runs on are often offline, so every training
# starts from random weights (a run without them would exit 2 naming the missing cache).
NO_HUB = ["--no-pretrained"]
AMP = ("bf16", "fp16", "off")  # auto is what the pipelines train with
TOGETHER = {"cuda": 4, "cpu": 2}  # variant rows run this many at a time (their time is not the point)


@dataclass
class Step:
    task: str
    name: str
    argv: list[str]
    expect: int = 0
    note: str = ""  # what the row shows besides time and memory: "score" reads it from the --json summary


@dataclass
class Row:
    step: Step
    code: int
    seconds: float
    peak_mib: float | None
    note: str
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = self.code == self.step.expect


def run(step: Step, work: Path, device: str) -> Row:
    peak = work / f"peak-{os.getpid()}-{time.monotonic_ns()}.json"
    env = {**os.environ, "KCOMP_CHECK_PEAK": str(peak), "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run([*STEP, "--quiet", *step.argv], capture_output=True, text=True, env=env, cwd=work)
    seconds = time.perf_counter() - t0
    info = json.loads(peak.read_text()) if peak.exists() else {}
    mem = info.get("gpu_mib") if device == "cuda" else info.get("rss_mib")
    note = _note(step, proc)
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{step.task}-{step.name.replace(' ', '_')}.log").write_text(
        f"$ kcomp {' '.join(step.argv)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return Row(step, proc.returncode, seconds, mem, note)


def _note(step: Step, proc: subprocess.CompletedProcess) -> str:
    if proc.returncode != step.expect:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("kcomp:")] or proc.stderr.splitlines()[-1:]
        return (lines[0] if lines else f"exit {proc.returncode}")[:110]
    if step.expect:
        return "refused as expected: " + proc.stderr.strip().splitlines()[0][len("kcomp: error: "):][:80]
    if step.note == "score":
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        if "mean" in summary:
            return f"{summary.get('metric')} {summary['mean']:.3f} (mean of folds)"
        return f"{summary.get('metric')} {summary['score']:.3f}"
    return step.note


# ------------------------------------------------------------------------------------------------- the data


# Per device: the raw data's size and each task's training options. The GPU's are small enough for the whole check
# to take minutes and large enough for a loop to be measured; the CPU's only check that every step runs.
SIZES = {
    "cuda": {"cls_images": 300, "clouds": (16, (280, 420)), "siim": (16, 24), "siim_size": "256",
             "cls": ["--model", "resnet18", "--img-size", "64", "--batch-size", "32"],
             "seg": ["--arch", "unet", "--model", "resnet18", "--img-size", "128", "--batch-size", "4"],
             "det": ["--model", "tf_efficientdet_d0", "--img-size", "256", "--batch-size", "4"],
             "ink": ["--model", "resnet18", "--layers", "2x3", "--patch", "64", "--batch-size", "16"]},
    "cpu": {"cls_images": 48, "clouds": (8, (140, 210)), "siim": (16, 24), "siim_size": "128",
            "cls": ["--model", "test_convnext", "--img-size", "32", "--batch-size", "8"],
            "seg": ["--arch", "unet", "--model", "resnet18", "--img-size", "64", "--batch-size", "2"],
            "det": ["--model", "tf_efficientdet_d0", "--img-size", "128", "--batch-size", "2"],
            "ink": ["--model", "resnet18", "--layers", "2x3", "--patch", "32", "--batch-size", "4"]},
}
TASKS = ("cls", "seg", "det", "ink")


def make_data(work: Path, size: dict) -> dict[str, Path]:
    """Raw layouts of the four competitions, small: `prep demo`'s builder and the test fixtures'."""
    from kcomp.competitions.demo import make_cls_layout
    from tests.clouds_fixture import make_clouds_layout
    from tests.siim_fixture import make_siim_layout
    from tests.vesuvius_fixture import make_vesuvius_layout

    n_clouds, clouds_shape = size["clouds"]
    n_cls = size["cls_images"]
    n_studies, n_images = size["siim"]
    return {"cls": make_cls_layout(work / "cls" / "raw", n_train=n_cls, n_test=n_cls // 5, seed=0),
            "seg": make_clouds_layout(work / "seg" / "raw", n_train=n_clouds, n_test=n_clouds // 4,
                                      size=clouds_shape, seed=3).raw,
            "det": make_siim_layout(work / "det" / "raw", n_studies=n_studies, n_images=n_images, seed=0),
            "ink": make_vesuvius_layout(work / "ink" / "raw", n_layers=16, seed=1)}


# ------------------------------------------------------------------------------------------------- the steps


def pipeline_steps(device: str, raw: dict[str, Path], size: dict) -> list[Step]:
    """prep, split, train (2 epochs, both folds), oof, tta, submit per task, as the README's pipelines run them."""
    dev = ["--device", device]
    c, s, d, i = Path("cls"), Path("seg"), Path("det"), Path("ink")
    train = ["--epochs", "2", "--fold", "all", "--json", *dev, *NO_HUB]
    CLS, SEG, DET, INK = (size[t] for t in TASKS)  # noqa: N806 - the tasks' option lists
    return [
        Step("cls", "prep", ["prep", "demo", str(raw["cls"]), "-o", str(c / "data")]),
        Step("cls", "split", ["split", str(c / "data/index.parquet"), "--folds", "2", "-o", str(c / "folds.parquet")]),
        Step("cls", "train", ["train", "cls", "--folds", str(c / "folds.parquet"), *CLS, *train, "-o",
                              str(c / "run")], note="score"),
        Step("cls", "oof --tta 2", ["oof", str(c / "run"), "--tta", "2", "--json", *dev, "-o",
                                    str(c / "oof.parquet")], note="score"),
        Step("cls", "tta --tta 8", ["tta", str(c / "run"), "--tta", "8", *dev, "-o", str(c / "test.parquet")]),
        Step("cls", "submit", ["submit", "demo", str(c / "test.parquet"), "--sample",
                               str(raw["cls"] / "sample_submission.csv"), "-o", str(c / "sub.csv")]),
        Step("seg", "prep", ["prep", "clouds", str(raw["seg"]), "-o", str(s / "data")]),
        Step("seg", "split", ["split", str(s / "data/index.parquet"), "--folds", "2", "-o", str(s / "folds.parquet")]),
        Step("seg", "train", ["train", "seg", "--folds", str(s / "folds.parquet"), *SEG, *train, "-o",
                              str(s / "run")], note="score"),
        Step("seg", "oof", ["oof", str(s / "run"), "--json", *dev, "-o", str(s / "oof.parquet")], note="score"),
        Step("seg", "tune-threshold", ["tune-threshold", str(s / "oof.parquet"), "-o", str(s / "thr.json")]),
        Step("seg", "tta --tta 8", ["tta", str(s / "run"), "--tta", "8", *dev, "-o", str(s / "test.parquet")]),
        Step("seg", "submit", ["submit", "clouds", str(s / "test.parquet"), "--thresholds", str(s / "thr.json"),
                               "--sample", str(raw["seg"] / "sample_submission.csv"), "-o", str(s / "sub.csv")]),
        Step("det", "prep", ["prep", "siim-covid19", str(raw["det"]), "--size", size["siim_size"], "-o",
                                str(d / "data")]),
        Step("det", "split", ["split", str(d / "data/index.parquet"), "--strategy", "group", "--folds", "2", "-o",
                              str(d / "folds.parquet")]),
        Step("det", "train", ["train", "det", "--folds", str(d / "folds.parquet"), *DET, *train, "-o",
                              str(d / "run")], note="score"),
        Step("det", "oof", ["oof", str(d / "run"), "--json", *dev, "-o", str(d / "oof.parquet")], note="score"),
        Step("det", "tta --tta 4", ["tta", str(d / "run"), "--tta", "4", *dev, "-o", str(d / "test.parquet")]),
        Step("det", "train study cls", ["train", "cls", "--folds", str(d / "folds.parquet"), "--target", "study",
                                        *CLS, *train, "-o", str(d / "study")], note="score"),
        Step("det", "tta study", ["tta", str(d / "study"), "--tta", "2", *dev, "-o", str(d / "study.parquet")]),
        Step("det", "submit", ["submit", "siim-covid19", str(d / "test.parquet"), str(d / "study.parquet"),
                               "--sample", str(raw["det"] / "sample_submission.csv"), "-o", str(d / "sub.csv")]),
        Step("ink", "prep", ["prep", "vesuvius", str(raw["ink"]), "-o", str(i / "data")]),
        Step("ink", "split", ["split", str(i / "data/index.parquet"), "--strategy", "group", "--folds", "2", "-o",
                              str(i / "folds.parquet")]),
        Step("ink", "train", ["train", "ink", "--folds", str(i / "folds.parquet"), *INK, *train, "-o",
                              str(i / "run")], note="score"),
        Step("ink", "oof", ["oof", str(i / "run"), "--json", *dev, "-o", str(i / "oof.parquet")], note="score"),
        Step("ink", "tune-threshold", ["tune-threshold", str(i / "oof.parquet"), "-o", str(i / "thr.json")]),
        Step("ink", "tta --tta 8", ["tta", str(i / "run"), "--tta", "8", *dev, "-o", str(i / "test.parquet")]),
        Step("ink", "submit", ["submit", "vesuvius", str(i / "test.parquet"), "--thresholds", str(i / "thr.json"),
                               "--sample", str(raw["ink"] / "sample_submission.csv"), "-o", str(i / "sub.csv")]),
    ]


def variant_steps(device: str, size: dict) -> list[Step]:
    """One epoch of fold 0 per variant: each --amp mode, --deterministic (every task, every seg architecture),
    --compile (cls)."""
    out = []

    def one(task: str, name: str, extra: list[str], opts: list[str] | None = None, expect: int = 0) -> Step:
        run = f"{task}/{name.replace(' ', '-').replace('--', '')}"
        return Step(task, name, ["train", task, "--folds", f"{task}/folds.parquet", *(opts or size[task]),
                                 "--epochs", "1", "--fold", "0", "--device", device, *NO_HUB, *extra, "-o", run],
                    expect=expect)

    for task in TASKS:
        for amp in AMP:
            refused = amp == "fp16" and device == "cpu"  # fp16 autocast + GradScaler is a CUDA mode
            out.append(one(task, f"--amp {amp}", ["--amp", amp], expect=2 if refused else 0))
        if task != "seg":
            out.append(one(task, "--deterministic", ["--deterministic"]))
    for arch in SEG_ARCHS:
        side = "256" if arch == "pan" else size["seg"][5]  # PAN pools its 1/32 features 8x further
        opts = ["--arch", arch, *size["seg"][2:5], side, *size["seg"][6:]]
        out.append(one("seg", f"--deterministic {arch}", ["--deterministic"], opts))
    out.append(one("cls", "--compile", ["--compile"]))
    return out


def multi_gpu_steps(device: str, gpus: int, size: dict) -> list[Step]:
    """DDP on 2 processes at half the batch against one process, and 2 folds at once (`--parallel-folds`)."""
    if device == "cuda" and gpus < 2:
        return []
    batch = int(size["cls"][5])
    base = ["train", "cls", "--folds", "cls/folds.parquet", *size["cls"][:4], "--epochs", "2", "--device", device,
            "--json", *NO_HUB]
    return [Step("multi", f"1 process, batch {batch}", [*base, "--batch-size", str(batch), "--fold", "0", "-o",
                                                        "multi/one"], note="score"),
            Step("multi", f"--gpus 2, batch {batch // 2}", [*base, "--batch-size", str(batch // 2), "--fold", "0",
                                                            "--gpus", "2", "-o", "multi/ddp"], note="score"),
            Step("multi", "--parallel-folds --gpus 2", [*base, "--batch-size", str(batch), "--fold", "all", "--gpus",
                                                        "2", "--parallel-folds", "-o", "multi/par"], note="score")]


def loop_rows(device: str, work: Path) -> list[Row]:
    """bench_loop.py's cls lines (train and tta from JPEGs and from the cache, and a 5-fold tta) on this device."""
    small = ["--images", "64", "--test-images", "64", "--img-size", "64", "--repeats", "1", "--train-repeats", "1"]
    sizes = ["--images", "640", "--test-images", "640", "--repeats", "2", "--train-repeats", "2",
             "--workers", str(min(8, os.cpu_count() or 2))]
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_loop.py"), "--skip-seg", "--no-write", "--device",
            device, *(sizes if device == "cuda" else small)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - t0
    step = Step("loops", "bench_loop.py --skip-seg", argv[1:])
    if proc.returncode:
        return [Row(step, proc.returncode, seconds, None, (proc.stderr.strip().splitlines() or ["?"])[-1][:110])]
    rows = []
    for line in proc.stdout.splitlines():
        name, _, rest = line.partition(": ours ")
        if rest:
            ours, limit = rest.split(", model-only ")[0], rest.split("model-only ")[1].split(",")[0]
            ratio = rest.split("ratio ")[1].split(" ")[0]
            rows.append(Row(Step("loops", name[:70], argv[1:]), 0, seconds if not rows else 0.0, None,
                            f"ours {ours}, model-only {limit}: ratio {ratio}"))
    return rows or [Row(step, 1, seconds, None, "bench_loop.py printed no lines")]


# ------------------------------------------------------------------------------------------------- the table


def gpu_name(device: str) -> str:
    import torch

    if device == "cuda":
        n = torch.cuda.device_count()
        major, minor = torch.cuda.get_device_capability(0)
        return f"{n} x {torch.cuda.get_device_name(0)} (sm_{major}{minor}), torch {torch.__version__}, CUDA " \
               f"{torch.version.cuda}"
    return f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def table(rows: list[Row], device: str) -> str:
    mem = "peak GPU MiB" if device == "cuda" else "peak RSS MiB"
    lines = [f"| task | step | exit | ok | seconds | {mem} | result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "-"
        lines.append(f"| {r.step.task} | {r.step.name} | {r.code} | {'yes' if r.ok else 'NO'} | {r.seconds:.1f} | "
                     f"{peak} | {r.note} |")
    return "\n".join(lines)


def main() -> int:
    device = os.environ.get("KCOMP_CHECK_DEVICE", "cuda")
    if device not in SIZES:
        sys.stderr.write(f"gpu_check: KCOMP_CHECK_DEVICE={device}: expected cuda or cpu\n")
        return 2
    default = ROOT / "benchmarks" / "RESULTS.md" if device == "cuda" else None  # a dry run measures no GPU
    results = Path(os.environ["KCOMP_CHECK_RESULTS"]) if os.environ.get("KCOMP_CHECK_RESULTS") else default
    size = SIZES[device]
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("gpu_check: no CUDA GPU here; KCOMP_CHECK_DEVICE=cpu runs the same steps on the CPU\n")
        return 2
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    work = Path(tempfile.mkdtemp(prefix="kcomp-gpu-check-"))
    start = time.perf_counter()
    try:
        raw = make_data(work, size)
        rows = [run(s, work, device) for s in pipeline_steps(device, raw, size)]
        with ThreadPoolExecutor(TOGETHER[device]) as pool:
            rows += list(pool.map(lambda s: run(s, work, device), variant_steps(device, size)))
        rows += [run(s, work, device) for s in multi_gpu_steps(device, gpus, size)]
        rows += loop_rows(device, work)
    finally:
        if not os.environ.get("KCOMP_CHECK_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            sys.stderr.write(f"gpu_check: kept {work}\n")
    total = time.perf_counter() - start
    failed = [r for r in rows if not r.ok]
    text = table(rows, device)
    print(text)
    head = (f"\n## gpu_check on {gpu_name(device)} ({datetime.date.today().isoformat()}, {len(rows)} steps, "
            f"{len(failed)} failed, {total / 60:.1f} min)\n\n`bash benchmarks/gpu_check.sh`"
            f"{' with KCOMP_CHECK_DEVICE=cpu' if device == 'cpu' else ''}; variant rows (--amp, --deterministic, "
            f"--compile) ran {TOGETHER[device]} at a time.\n\n")
    if results is not None:
        with results.open("a") as f:
            f.write(head + text + "\n")
    where = f"table appended to {results}" if results is not None else "table not recorded (CPU dry run)"
    sys.stderr.write(f"gpu_check: {len(rows) - len(failed)} of {len(rows)} steps as expected in {total / 60:.1f} min; "
                     f"{where}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
