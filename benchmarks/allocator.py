"""The host allocator and a train step: back to back, and after the process sat idle for a while.

    .venv/bin/python -m benchmarks.allocator [--quick] [--gaps 0,2,5,10] [--repeats 3] [--shape 4,512]

One train step of benchmarks/peers.py's model (the trainer's `sft_step`, fp32, vocabulary 32,000; --quick: the
smoke sizes) runs in one process per allocator, one process after the other, each with the environment
`a1jax.hugepages.environ` gives it:
  system     glibc's defaults (A1JAX_HUGEPAGES=0);
  hugepages  glibc's `glibc.malloc.hugetlb=1` tunable: large buffers on transparent huge pages (A1JAX_TCMALLOC=0);
  tcmalloc   tcmalloc preloaded (and the tunable), a1jax's default where tcmalloc is installed; skipped elsewhere.
Each process compiles, runs two untimed steps, then for every gap G of --gaps, --repeats times: sleeps G seconds,
times one step, and runs one untimed step (so the next gap starts from a process that has just stepped). The table
gives the median step time per gap; a gap of 0 is steps back to back.

Why gaps: XLA:CPU allocates a program's large temporaries at every call; glibc unmaps them when they are freed. On a
virtual machine whose balloon device reports free memory to the host (virtio-balloon free page reporting, printed
below the table), the host takes the freed memory back after about 2 s, and the next step faults it in again from
the host. tcmalloc keeps freed memory in the process. docs/performance.md, "Memory the host takes back", has the
figures.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOCATORS = ("system", "hugepages", "tcmalloc")


def free_page_reporting() -> str:
    """Whether a virtio balloon here reports free pages to the host (feature bit 5, VIRTIO_BALLOON_F_REPORTING)."""
    for dev in glob.glob("/sys/bus/virtio/devices/*"):
        try:
            with open(os.path.join(dev, "device")) as f:
                if f.read().strip() != "0x0005":  # the balloon
                    continue
            with open(os.path.join(dev, "features")) as f:
                bits = f.read().strip()
        except OSError:
            continue
        return "on (virtio-balloon)" if len(bits) > 5 and bits[5] == "1" else "off (virtio-balloon)"
    return "no virtio balloon"


def allocator_env(name: str) -> dict | None:
    """The environment of one allocator's process; None where it cannot apply (tcmalloc not installed)."""
    from a1jax import hugepages
    base = {k: v for k, v in os.environ.items() if k not in hugepages.ALLOCATOR_VARS + (hugepages.TCMALLOC_SWITCH,)}
    base["JAX_PLATFORMS"] = "cpu"
    if name == "system":
        return hugepages.environ(base, on=False)
    if name == "hugepages":
        return hugepages.environ(dict(base, **{hugepages.TCMALLOC_SWITCH: "0"}))
    env = hugepages.environ(base)
    return env if env.get("LD_PRELOAD") else None


def child(workdir: str, key: str, gaps: list[float], repeats: int) -> dict:
    import jax
    from benchmarks import peers
    spec, inputs = peers.read_spec(workdir)
    _, _, step, state = peers.a1jax_trainer(spec)
    batch = peers._train_batch(inputs[key])

    def one() -> float:
        nonlocal state
        t = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, batch))
        return time.perf_counter() - t

    one(), one()
    times = {}
    for gap in gaps:
        times[str(gap)] = []
        for _ in range(repeats):
            time.sleep(gap)
            times[str(gap)].append(one())
            one()
    return dict(times=times, tokens=int(inputs[key].size))


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smoke sizes of benchmarks.peers --quick")
    p.add_argument("--gaps", default="0,2,5,10", help="comma-separated seconds of idle before a timed step")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per gap")
    p.add_argument("--shape", default="", help="the train row: 'train_batch' (4 x 512, default) or 'train_long'")
    p.add_argument("--allocators", default=",".join(ALLOCATORS), help=f"comma-separated, of {ALLOCATORS}")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: WORKDIR of one allocator's process
    args = p.parse_args(argv)
    try:
        gaps = [float(g) for g in args.gaps.split(",") if g.strip()]
    except ValueError:
        p.error(f"--gaps={args.gaps!r}: expected comma-separated seconds, e.g. 0,2,5,10")
    if not gaps or min(gaps) < 0 or args.repeats < 1:
        p.error("--gaps needs at least one value >= 0 and --repeats at least 1")
    key = args.shape or "train_batch"
    if key not in ("train_batch", "train_long"):
        p.error(f"--shape={args.shape!r}: expected train_batch or train_long")
    if args.child:
        print("@@allocator " + json.dumps(child(args.child, key, gaps, args.repeats)), flush=True)
        return None
    names = [a for a in args.allocators.split(",") if a]
    if not names or any(a not in ALLOCATORS for a in names):
        p.error(f"--allocators={args.allocators!r}: expected a comma-separated subset of {ALLOCATORS}")
    import jax
    from a1jax import distributed
    from benchmarks import peers
    distributed.pin_host_platforms()
    results = {}
    with tempfile.TemporaryDirectory(prefix="allocator-") as workdir:
        spec = peers.prepare(workdir, peers.model_config(args.quick), peers.shapes(args.quick), 0,
                             len(os.sched_getaffinity(0)), 1, 1)
        for name in names:
            env = allocator_env(name)
            if env is None:
                print(f"allocator: {name} is not installed here; skipped", file=sys.stderr)
                continue
            cmd = [sys.executable, "-m", "benchmarks.allocator", "--child", workdir, "--gaps", args.gaps,
                   "--repeats", str(args.repeats), "--shape", key] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("@@allocator ")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"the {name} process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            res = json.loads(line.split(" ", 1)[1])
            res["env"] = {k: env[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD") if env.get(k)}
            results[name] = res
    shape = spec["shapes"][key]
    print(f"train step {shape[0]} x {shape[1]} of benchmarks.peers' model, median of {args.repeats} per gap "
          f"(seconds); jax {jax.__version__}, {len(os.sched_getaffinity(0))} cores, {peers.cpu_model()}")
    print(f"{'allocator':10s}  " + "  ".join(f"{'after ' + format(g, 'g') + ' s' if g else 'back to back':>12s}"
                                             for g in gaps))
    for name, res in results.items():
        print(f"{name:10s}  " + "  ".join(f"{statistics.median(res['times'][str(g)]):12.3f}" for g in gaps))
    print(f"free page reporting to the host: {free_page_reporting()}; load average {os.getloadavg()[0]:.2f}")
    return dict(gaps=gaps, repeats=args.repeats, shape=shape, results=results, reporting=free_page_reporting())


if __name__ == "__main__":
    main()
