"""The GPU check (issue #26): what this code does on one NVIDIA GPU, in one short call.

    bash launch/gpu_check.sh             # on the GPU machine: installs, then runs this
    bash launch/gpu_check.sh --dry-run   # anywhere (CI runs it): the same checks on CPU

Every check drives the real entry points (``mnist-dist train``, ``mnist-dist bench``) in
subprocesses and records what it saw in ``OUT/gpu_check.json``, rewritten atomically after
each check, so that a run cut short still returns what it measured. A failing check is
recorded (``ok: false`` and why) and the next one runs. In order of value:

1. ``precision``: step4 and step7, one epoch each, in fp32, bf16 and fp16. Each run's
   result.json must say that it trained on the GPU with its data there (``device``,
   ``data_device``) and computed in the dtype asked for (``compute_dtype``: the first
   convolution's output). On a GPU the six run side by side, so their seconds are no speed
   figures (the bench's are). The dry run expects fp16's one-line refusal on a CPU.
2. ``fp16_resume``: a run killed after its first checkpoint and resumed must load the saved
   GradScaler scale and end with the uninterrupted run's scaler state (scale and growth
   tracker); the histories are compared too (bitwise where the kernels are deterministic,
   as on CPU; on a GPU cuDNN may pick other algorithms, so the largest difference is
   recorded). The dry run resumes a bf16 run (no scaler): the same kill and resume.
3. ``bench``: ``mnist-dist bench`` images/s per step in fp32 and bf16, beside the committed
   CPU figures (``results/bench/raw/step7-amd.json``).
4. ``packs``: N seeds trained as one packed net (``train --seeds``) against one separate
   run: seconds per seed-epoch, and seed 0's accuracy in both.
5. ``compile``: one ``--compile`` run (CUDA graphs on a GPU), its epoch against eager's.

The dry run uses a tiny generated MNIST and small sizes; the GPU run the real set, which
``gpu_check.sh`` unpacks from the gzipped files carried beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_BENCH = REPO / "results" / "bench" / "raw" / "step7-amd.json"
# Sizes: the GPU run's, then the dry run's (images; seeds per pack).
GPU = dict(limit=None, resume_limit=10000, pack_limit=2000, packs=(8, 64, 256), parallel=6,
           bench=("--iters", "50", "--warmup", "10", "--repeats", "3"))  # fmt: skip
DRY = dict(limit=512, resume_limit=2048, pack_limit=256, packs=(2, 4), parallel=1,
           bench=("--iters", "2", "--warmup", "1", "--repeats", "1", "--cpu"))  # fmt: skip


class Check:
    def __init__(self, out: Path, data: Path, dry: bool, work: Path):
        self.out, self.data, self.dry, self.work = out, data, dry, work
        self.size = DRY if dry else GPU
        self.record = dict(
            dry_run=dry,
            device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            torch=torch.__version__,
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            checks={},
        )

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-m", "mnist_dist", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def train_args(self, name: str, *args: str, limit=None) -> list[str]:
        """``train`` into work/name, scoring the test set once, on the right device."""
        extra = ["--cpu"] if self.dry else []
        if limit:
            extra += ["--train-limit", str(limit)]
        return ["train", *args, "--test-eval", "final", "--no-progress", "--no-download", *extra,
                "--data-dir", str(self.data), "--out", str(self.work / name)]  # fmt: skip

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1) + "\n")
        os.replace(tmp, path)

    def run(self, name: str, fn) -> None:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - one check's failure never stops the next
            got = dict(ok=False, error=f"{type(e).__name__}: {e}")
        got["seconds"] = round(time.perf_counter() - t0, 1)
        self.record["checks"][name] = got
        print(json.dumps(got)[:2000], flush=True)
        self.save()

    # ---- 1. precision -----------------------------------------------------------------

    def precision(self) -> dict:
        cases = [(s, p) for s in ("step4", "step7") for p in DTYPES]
        with ThreadPoolExecutor(self.size["parallel"]) as pool:
            runs = list(pool.map(lambda c: self.one_precision(*c), cases))
        return dict(ok=all(r["ok"] for r in runs), runs=runs)

    def one_precision(self, step: str, precision: str) -> dict:
        name = f"precision-{step}-{precision}"
        args = self.train_args(name, "--step", step, "--epochs", "1", "--mixed-precision",
                               precision, limit=self.size["limit"])  # fmt: skip
        proc = self.cli(*args)
        row = dict(step=step, precision=precision)
        if self.dry and precision == "fp16":  # a CPU refuses fp16 in one line
            err = proc.stderr.strip()
            ok = proc.returncode != 0 and "fp16 needs a CUDA GPU" in err and "\n" not in err
            return dict(row, ok=ok, refused=err)
        if proc.returncode != 0:
            return dict(row, ok=False, error=proc.stderr.strip()[-500:])
        r = json.loads((self.work / name / "result.json").read_text())
        dev = "cpu" if self.dry else "cuda"
        row.update({k: r.get(k) for k in ("device", "device_name", "data_device",
                                          "compute_dtype", "final_test_acc")})  # fmt: skip
        row["epoch_seconds"] = r["history"][-1]["seconds"]
        row["ok"] = (r["device"].startswith(dev) and str(r["data_device"]).startswith(dev)
                     and r["compute_dtype"] == DTYPES[precision])  # fmt: skip
        return row

    # ---- 2. fp16 resume ---------------------------------------------------------------

    def resume(self) -> dict:
        precision = "bf16" if self.dry else "fp16"
        common = ("--step", "step7", "--epochs", "3", "--mixed-precision", precision)
        full = self.train_args("resume-full", *common, limit=self.size["resume_limit"])
        part = self.train_args("resume-part", *common, limit=self.size["resume_limit"])
        proc = self.cli(*full)
        if proc.returncode != 0:
            return dict(ok=False, precision=precision, error=proc.stderr.strip()[-500:])
        folder = self.work / "resume-part"
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
        killed = subprocess.Popen([sys.executable, "-m", "mnist_dist", *part], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 240
        while not (folder / "checkpoint.pt").exists() and killed.poll() is None:
            if time.time() > deadline:
                break
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        if (folder / "result.json").exists() or not (folder / "checkpoint.pt").exists():
            return dict(ok=False, precision=precision, error="not killed between epochs 1 and 3")
        saved = torch.load(folder / "checkpoint.pt", weights_only=True)
        proc = self.cli(*part, "--resume")
        if proc.returncode != 0:
            return dict(ok=False, precision=precision, error=proc.stderr.strip()[-500:])
        a, b = (json.loads((self.work / n / "result.json").read_text())
                for n in ("resume-full", "resume-part"))  # fmt: skip
        keys = ("train_loss", "train_acc", "lr")
        diff = max(abs(x[k] - y[k]) for x, y in zip(a["history"], b["history"], strict=True)
                   for k in keys)  # fmt: skip
        scalers = [torch.load(self.work / n / "checkpoint.pt", weights_only=True)["scaler"]
                   for n in ("resume-full", "resume-part")]  # fmt: skip
        line = next(x for x in proc.stdout.splitlines() if "resuming" in x)
        row = dict(precision=precision, resumed_after=saved["epoch"], history_max_diff=diff,
                   history_equal=diff == 0 and a["final_test_acc"] == b["final_test_acc"],
                   resume_line=line)  # fmt: skip
        if saved["scaler"] is None:  # bf16 or fp32: nothing to carry but the rest
            return dict(row, ok=row["history_equal"] and scalers == [None, None])
        want = f"fp16 loss scale {saved['scaler']['scale']:g}"
        pick = ("scale", "_growth_tracker")
        row.update(saved_scale=saved["scaler"]["scale"],
                   final_scaler=[{k: s[k] for k in pick} for s in scalers])  # fmt: skip
        same = [{k: s[k] for k in pick} for s in scalers]
        return dict(row, ok=want in row["resume_line"] and same[0] == same[1])

    # ---- 3. bench, 4. packs, 5. compile -------------------------------------------------

    def bench(self) -> dict:
        proc = self.cli("bench", "--step-list", "step4,step7", "--json", "--data-dir",
                        str(self.data), *self.size["bench"])  # fmt: skip
        if proc.returncode != 0:
            return dict(ok=False, error=proc.stderr.strip()[-500:])
        r = json.loads(proc.stdout)
        cpu = json.loads(CPU_BENCH.read_text())
        ref = {s["step"]: s for s in cpu["per_step"]}
        rows = []
        for s in r["per_step"]:
            row = dict(step=s["step"], batch_size=s["batch_size"])
            for loop in ("fp32", "bf16"):
                mine, theirs = s[loop]["images_per_s"], ref[s["step"]][loop]["images_per_s"]
                row[loop] = dict(images_per_s=round(mine), cpu_images_per_s=round(theirs),
                                 vs_cpu=round(mine / theirs, 2),
                                 compute_dtype=s[loop]["compute_dtype"])  # fmt: skip
            rows.append(row)
        ok = all(row[lp]["compute_dtype"] == DTYPES["bf16" if lp == "bf16" else "no"]
                 for row in rows for lp in ("fp32", "bf16"))  # fmt: skip
        cpu_where = f"{cpu['cpu_model']}, {cpu['threads']} threads ({CPU_BENCH.name})"
        return dict(ok=ok, device=r["device_name"] or r["cpu_model"], cpu=cpu_where, steps=rows)

    def packs(self) -> dict:
        limit = self.size["pack_limit"]
        common = ("--step", "step7", "--epochs", "1")
        proc = self.cli(*self.train_args("pack-separate", *common, "--seed", "0", limit=limit))
        if proc.returncode != 0:
            return dict(ok=False, error=proc.stderr.strip()[-500:])
        sep = json.loads((self.work / "pack-separate" / "result.json").read_text())
        rows = []
        for n in self.size["packs"]:
            name = f"pack-{n}"
            proc = self.cli(*self.train_args(name, *common, "--seeds", f"0-{n - 1}", limit=limit),
                            timeout=600)  # fmt: skip
            if proc.returncode != 0:
                rows.append(dict(seeds=n, ok=False, error=proc.stderr.strip()[-500:]))
                continue
            results = [json.loads(p.read_text()) for p in (self.work / name).glob("*/result.json")]
            seed0 = next(r for r in results if r["seed"] == 0)
            seconds = seed0["train_seconds"]  # a pack's seconds are the whole pack's
            rows.append(dict(seeds=n, ok=len(results) == n, pack_seconds=round(seconds, 2),
                             seconds_per_seed=round(seconds / n, 3),
                             speedup_vs_separate=round(sep["train_seconds"] * n / seconds, 2),
                             seed0_test_acc=seed0["final_test_acc"],
                             separate_seed0_test_acc=sep["final_test_acc"]))  # fmt: skip
        return dict(ok=all(r["ok"] for r in rows), images_per_seed=limit,
                    separate_seconds=round(sep["train_seconds"], 2), packs=rows)  # fmt: skip

    def compile(self) -> dict:
        args = self.train_args("compiled", "--step", "step7", "--epochs", "1", "--compile",
                               limit=self.size["limit"])  # fmt: skip
        proc = self.cli(*args, timeout=600)
        if proc.returncode != 0:
            return dict(ok=False, error=proc.stderr.strip()[-500:])
        r = json.loads((self.work / "compiled" / "result.json").read_text())
        eager = self.record["checks"].get("precision", {}).get("runs", [])
        eager = next((x for x in eager if (x["step"], x["precision"]) == ("step7", "no")), {})
        return dict(ok=r["config"]["compile"] and r["final_test_acc"] is not None,
                    epoch_seconds_with_compile=r["history"][-1]["seconds"],
                    eager_epoch_seconds=eager.get("epoch_seconds"),
                    final_test_acc=r["final_test_acc"])  # fmt: skip


def tiny_mnist(root: Path, n_train: int = 2048, n_test: int = 256) -> Path:
    """A learnable toy MNIST for the dry run: a bright bar at each class's own rows."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 4 + 2 * y : 6 + 2 * y, 6:22] = 255
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            head = np.array([0x800 + arr.ndim, *arr.shape], dtype=">i4").tobytes()
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(head + arr.tobytes())
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="where gpu_check.json goes ($OUT)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (not with --dry-run)")
    p.add_argument("--work", help="run folders (default: a folder beside --out's parent)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny data, small sizes")
    p.add_argument("--only", help="comma-separated checks to run (default: all)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or f"/tmp/gpu-check-work-{os.getpid()}")
    data = tiny_mnist(work / "data") if args.dry_run else Path(args.data_dir)
    check = Check(out, data, args.dry_run, work)
    names = ("precision", "resume", "bench", "packs", "compile")
    chosen = args.only.split(",") if args.only else names
    for name in names:
        if name in chosen:
            check.run(name, getattr(check, name))
    check.record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check.record["ok"] = all(c["ok"] for c in check.record["checks"].values())
    check.save()
    print(f"gpu check {'passed' if check.record['ok'] else 'FAILED'}: {out / 'gpu_check.json'}")
    sys.exit(0 if check.record["ok"] else 1)


if __name__ == "__main__":
    main()
