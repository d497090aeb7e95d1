#!/usr/bin/env bash
# device_check.sh -- tmesim's CUDA path verified and measured in one call on a lent GPU machine
# (H100/H200; an image with cupy-cuda13x, numpy, scipy, h5py, xarray, matplotlib, tqdm, pytest,
# pytest-timeout, no network, no other packages). Run it from the repository root:
#
#     bash benchmarks/device_check.sh                   # results under $OUT if set, else ./device_out
#     BUDGET_S=300 bash benchmarks/device_check.sh      # total wall budget in seconds (default 500)
#     DC_DRY=1 bash benchmarks/device_check.sh          # dry run on a CPU, the C++ kernels standing
#                                                       # in for the GPU, the image's missing
#                                                       # packages hidden (DC_HIDE)
#     DC_ONLY="smoke probe" bash benchmarks/device_check.sh   # only these stages ("bench": both)
#
# Stages, each skipped when the budget left is below its estimate and stopped at its cap, so that
# partial results always come back; summary.md is written as it goes and printed last:
#   env          nvidia-smi, tools (nvcc, g++, compute-sanitizer), versions, setup.cfg's
#                requirements against what is installed (wheels carried in ./.whl go to /tmp/site
#                only where something is missing). tmesim runs from the tree (PYTHONPATH=.)
#   pytest       every test marked gpu in tests/ (-m gpu: the parity tests' gpu parameter and the
#                device-resident tests), the per-test --timeout of pytest-timeout. Plugins are not
#                autoloaded (the image has none but pytest-timeout); a test module that cannot
#                import a package the image lacks is listed as not run, any other collection
#                error fails the stage
#   smoke        scenarios/quickstart_2d.toml (the README's first command) for 6 simulated hours
#                on the GPU and on the CPU, twice: with solver.method = lod and with the default
#                ADI solver (CG + multigrid), where the project claims every array and every
#                time-series column bit for bit (the CG's dots and the observables' sums follow
#                tmesim.reduce's order on both; tests/test_simulation_backends.py)
#   memcheck     compute-sanitizer memcheck on a few small device tests, cupy's memory pool off
#                (every array its own allocation, so an access past an end meets an edge)
#   probe        benchmarks/gpu_probe.py: registers and local memory of every kernel as NVRTC built
#                it, 64-bit indexing past 2^32 items, micro-benchmarks, one 256^3 agent step of
#                the bench scenario launch by launch (a timeline table per kernel name), LOD, a
#                CUDA graph of the preconditioner, run-file I/O
#   bench-3d-128, bench-3d-256   benchmarks/bench_gpu.py --skip-run at that size
# Files under $OUT: summary.md, env.txt, pytest.log, smoke.txt, memcheck.log, probe.md, probe.json,
# bench_gpu.md, device_check.log (everything printed).
set -u -o pipefail

START=$SECONDS
BUDGET=${BUDGET_S:-500}
RESERVE=12 # seconds kept for the summary
REPO=$(pwd)
OUT=${OUT:-$REPO/device_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/tmesim_dc.XXXXXX)
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
GPU_BACKEND=gpu
DRY=${DC_DRY:-}
if [ -n "$DRY" ]; then
    GPU_BACKEND=portable
    DC_HIDE=${DC_HIDE-napari qtpy PyQt6 pytestqt dask distributed dask_jobqueue hypothesis xdist}
else
    DC_HIDE=${DC_HIDE-}
fi
export REPO OUT WORK PY SUMMARY GPU_BACKEND DRY DC_HIDE
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg CUPY_CACHE_DIR="$WORK/cupy_cache"
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
export PYTHONPATH="$REPO:$WORK/plugins:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
[ -n "$DC_HIDE" ] && export PYTHONPATH="$WORK/hide:$PYTHONPATH"
exec > >(tee -a "$OUT/device_check.log") 2>&1

if [ ! -f "$REPO/tmesim/launch.py" ] || [ ! -d "$REPO/kernels" ] \
    || [ ! -f "$REPO/benchmarks/gpu_probe.py" ]; then
    echo "device_check.sh: run me from the tmesim repository root (no tmesim/launch.py here)"
    exit 2
fi

left() { echo $((BUDGET - (SECONDS - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }

asked() { # is stage $1 in DC_ONLY (or DC_ONLY unset)? "bench" asks for every bench-* stage
    [ -z "${DC_ONLY:-}" ] && return 0
    local w
    for w in $DC_ONLY; do
        [ "$w" = "$1" ] || [ "$w-" = "${1:0:${#w}+1}" ] && return 0
    done
    return 1
}

# stage NAME EST_S CAP_S COMMAND...: run the exported function COMMAND under `timeout`, if the
# budget holds EST_S; the row of the summary table says how it ended
stage() {
    local name=$1 est=$2 cap=$3
    shift 3
    if ! asked "$name"; then
        note "| $name | not asked for (DC_ONLY) | - |"
        return 0
    fi
    local l
    l=$(($(left) - RESERVE))
    if ((l < est)); then
        note "| $name | skipped | only ${l} s of the budget left (needs ~${est} s) |"
        return 0
    fi
    ((cap > l)) && cap=$l
    echo
    echo "======== $name (cap ${cap} s, ${l} s left) ========"
    local t=$SECONDS rc
    # in the background and waited for, so that a signal to this script is handled at once (the
    # trap stops the stage: timeout leads its own process group)
    CAP=$cap timeout --signal=TERM --kill-after=10 "$cap" bash -c 'set -o pipefail; "$@"' _ "$@" &
    STAGE_PID=$!
    wait "$STAGE_PID"
    rc=$?
    STAGE_PID=
    local what="exit $rc"
    ((rc == 0)) && what="ok"
    ((rc == 3)) && what="skipped (see the log)"
    ((rc == 124 || rc == 137)) && what="TIMED OUT at ${cap} s"
    note "| $name | $what | $((SECONDS - t)) s |"
    return 0
}

finish() {
    trap - TERM INT
    "$PY" "$WORK/summary.py" >>"$SUMMARY" 2>&1
    note ""
    note "total $((SECONDS - START)) s of a ${BUDGET} s budget$1; files in $OUT:" \
        "$(find "$OUT" -maxdepth 1 -type f -printf '%f\n' | sort | tr '\n' ' ')"
    rm -rf "$WORK"
    echo
    echo "================================ SUMMARY ================================"
    cat "$SUMMARY"
    sleep 1 # let the log's tee drain before the call returns
}
STAGE_PID=
interrupted() {
    [ -n "$STAGE_PID" ] && kill -TERM -- -"$STAGE_PID" 2>/dev/null
    note "| (interrupted) | signal | - |"
    finish " (INTERRUPTED)"
    exit 130
}
trap interrupted TERM INT

{
    echo "# tmesim device check, $(date -u +%Y-%m-%dT%H:%MZ)$([ -n "$DRY" ] && echo ', DRY RUN on a CPU')"
    echo
    echo "| stage | result | time |"
    echo "|---|---|---|"
} >"$SUMMARY"

# ------------------------------------------------------------------------------ helper files
mkdir -p "$WORK/plugins" "$WORK/hide"
cat >"$WORK/hide/sitecustomize.py" <<'PYEOF'
"""Hide the packages named in $DC_HIDE (a dry run meets the imports the GPU image lacks): the
path finder does not find them, so importing one raises ModuleNotFoundError and
importlib.util.find_spec says None, as where they are not installed."""
import os
from importlib.machinery import PathFinder

_HIDDEN = set(os.environ.get("DC_HIDE", "").split())
_find_spec = PathFinder.find_spec.__func__


def _find_unhidden(cls, name, path=None, target=None):
    if name.split(".")[0] in _HIDDEN:
        return None
    return _find_spec(cls, name, path, target)


PathFinder.find_spec = classmethod(_find_unhidden)
PYEOF

cat >"$WORK/plugins/dc_pytest.py" <<'PYEOF'
"""pytest plugin of device_check.sh: a test module that cannot import a package missing on this
machine is listed as not run (the stage still passes); any other collection error, or a failed
test, fails the stage. Notes go to $DC_PYTEST_NOTES."""
import os
import re

_MISSING = re.compile(r"No module named '([\w.]+)'")
_seen = {"missing": [], "other": [], "failed": 0, "passed": 0}


def pytest_collectreport(report):
    if not report.failed:
        return
    m = _MISSING.search(str(report.longrepr))
    if m and not m.group(1).startswith("tmesim"):
        _seen["missing"].append(f"{report.nodeid} (needs {m.group(1)})")
    else:
        _seen["other"].append(report.nodeid)


def pytest_runtest_logreport(report):
    if report.failed:
        _seen["failed"] += 1
    elif report.when == "call" and report.passed:
        _seen["passed"] += 1


def pytest_sessionfinish(session, exitstatus):
    lines = [f"NOT RUN, cannot import on this machine: {m}" for m in _seen["missing"]]
    lines += [f"COLLECTION ERROR: {n}" for n in _seen["other"]]
    on_gpu = not os.environ.get("DRY") and not session.config.option.collectonly
    if on_gpu and not _seen["passed"]:
        lines.append("NO TEST RAN on this GPU machine (cupy sees no device?)")
        session.exitstatus = 1
    path = os.environ.get("DC_PYTEST_NOTES")
    if path:
        with open(path, "a") as f:
            f.writelines(ln + "\n" for ln in lines)
    only_missing = _seen["missing"] and not _seen["other"] and not _seen["failed"]
    if only_missing and exitstatus == 1 and (_seen["passed"] or not on_gpu):
        session.exitstatus = 0  # only the missing packages' modules, listed above
PYEOF

cat >"$WORK/plugins/dc_nopool.py" <<'PYEOF'
"""pytest plugin: cupy allocates every array with cudaMalloc (no pool), so memcheck sees edges."""


def pytest_configure(config):
    import cupy

    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
PYEOF

cat >"$WORK/compare_runs.py" <<'PYEOF'
"""compare_runs.py DEVICE.h5 CPU.h5 exact|adi: the claims of tests/test_simulation_backends.py.

exact (either solver.method): every snapshot and checkpoint array and every time-series column
bit for bit (the CG's dots and the observables' sums follow tmesim.reduce's order on both).
adi (kept for comparing with runs before issue 16's fixed-order reductions): over the first 4
agent steps (snapshots and rows at time <= 4 dt) the integer arrays and integer columns equal,
fields, memory and float columns within rtol 1e-4 (fields atol 1e-5); later ones described.
Exit status 1 when a claim fails."""
import sys

import h5py
import numpy as np

dev_path, cpu_path, mode = sys.argv[1:4]
d, c = h5py.File(dev_path, "r"), h5py.File(cpu_path, "r")
dt = float(c.attrs["dt_min"])
bad, info = [], []


def close(a, b, rtol, atol=0.0):
    return np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def judge(name, a, b, claimed, rtol, atol=0.0):
    if a.shape != b.shape:
        bad.append(f"{name}: shape {a.shape} vs {b.shape}")
        return
    if a.dtype.kind in "fc":
        ok = np.array_equal(a, b, equal_nan=True) if rtol == 0 else close(a, b, rtol, atol)
        diff = np.nanmax(np.abs(a.astype(np.float64) - b)) if a.size else 0.0
        what = f"{name}: max |diff| {diff:.3g}"
    else:
        ok = np.array_equal(a, b)
        what = f"{name}: {int(np.sum(a != b))} of {a.size} differ"
    if not ok:
        (bad if claimed else info).append(what)


n = 0
snap_t = c["snapshots/time"][()]
early = snap_t <= 4 * dt + 1e-9
for name in ("kind", "tumor_state", "memory", "step", "time"):
    for sel, claimed in ((early, True), (~early, mode == "exact")):
        n += 1
        a, b = d[f"snapshots/{name}"][()][sel], c[f"snapshots/{name}"][()][sel]
        tol = 0.0 if mode == "exact" or a.dtype.kind not in "fc" else 1e-4
        judge(f"snapshots/{name}{'' if claimed else ' (after 4 steps)'}", a, b, claimed, tol)
for name in c["snapshots/fields"]:
    for sel, claimed in ((early, True), (~early, mode == "exact")):
        n += 1
        a, b = d[f"snapshots/fields/{name}"][()][sel], c[f"snapshots/fields/{name}"][()][sel]
        tol = (0.0, 0.0) if mode == "exact" else (1e-4, 1e-5)
        judge(f"snapshots/fields/{name}{'' if claimed else ' (after 4 steps)'}", a, b, claimed, *tol)
rows_t = c["timeseries/time_min"][()]
early_rows = rows_t <= 4 * dt + 1e-9
for name in c["timeseries"]:
    a, b = d[f"timeseries/{name}"][()], c[f"timeseries/{name}"][()]
    for sel, claimed in ((early_rows, True), (~early_rows, mode == "exact")):
        n += 1
        rtol = 0.0 if mode == "exact" else 1e-4
        judge(f"timeseries/{name}{'' if claimed else ' (after 4 steps)'}", a[sel], b[sel], claimed, rtol)
if mode == "exact" and "checkpoint" in c:
    def visit(name, obj):
        global n
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind not in "SO" and "state" in name:
            n += 1
            judge(f"checkpoint/{name}", d[f"checkpoint/{name}"][()], obj[()], True, 0.0)
    c["checkpoint"].visititems(visit)
status = tuple(
    (v.decode() if isinstance(v, bytes) else str(v)).strip()
    for v in (f.attrs["status"] for f in (d, c))
)
if status[0] != status[1]:
    bad.append(f"status {status[0]} vs {status[1]}")
claim = "bit for bit" if mode == "exact" else "integers equal, floats within 1e-4 over 4 steps"
print(f"{mode}: compared {n} arrays of {len(snap_t)} snapshots and {len(rows_t)} rows ({claim}): "
      f"{'AS CLAIMED' if not bad else 'CLAIM FAILS'}; status {status[0]} / {status[1]}")
for s in bad[:20]:
    print("   FAILS:", s)
for s in info[:12]:
    print("   differs (not claimed):", s)
sys.exit(1 if bad else 0)
PYEOF

# ------------------------------------------------------------------------------ env
s_env() {
    {
        echo "## nvidia-smi"
        nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version \
            --format=csv 2>&1 || echo "nvidia-smi failed (no GPU here?)"
        echo "## tools"
        { command -v nvcc && nvcc --version | tail -2; } || echo "no nvcc"
        { command -v g++ && g++ --version | head -1; } \
            || echo "no g++: the portable build's tests skip (the gpu tests do not need it)"
        echo "compute-sanitizer: ${SAN:-none found}"
        echo "## python"
        command -v "$PY"
        "$PY" --version
        "$PY" - <<'PYEOF'
import configparser, importlib.metadata as md
from packaging.requirements import Requirement
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
reqs += ["cupy-cuda13x>=13", "pytest>=8", "pytest-timeout", "packaging"]
missing = []
for r in reqs:
    req = Requirement(r)
    try:
        v = md.version(req.name)
    except md.PackageNotFoundError:
        v = None
    ok = v is not None and req.specifier.contains(v, prereleases=True)
    print(f"{r:28s} installed {v or '-':12s} {'ok' if ok else 'MISSING/OLD'}")
    if not ok and req.name != "cupy-cuda13x":
        missing.append(req.name)
open("/tmp/tmesim_dc_missing.txt", "w").write(" ".join(missing))
PYEOF
        local missing
        missing=$(cat /tmp/tmesim_dc_missing.txt 2>/dev/null)
        if [ -n "$missing" ]; then
            if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
                echo "installing the carried wheels (missing: $missing)"
                "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                    --upgrade --target /tmp/site "$REPO"/.whl/*.whl 2>&1 | tail -5
            else
                echo "MISSING: $missing, and no .whl/ folder was carried"
            fi
        fi
        [ -n "$DC_HIDE" ] && echo "hidden from Python (the image lacks them): $DC_HIDE"
        "$PY" -c "
import tmesim
from tmesim.launch import find_kernel_dir
print('tmesim', tmesim.__version__, 'from', tmesim.__file__, '| kernels', find_kernel_dir())
import os, sys
try:
    import cupy
    seen = cupy.is_available()
    print('cupy', cupy.__version__, '| sees a GPU:', seen)
except Exception as e:
    seen = False
    print('cupy:', type(e).__name__, e)
sys.exit(0 if seen or os.environ.get('DRY') else 1)
"
    } 2>&1 | tee "$OUT/env.txt"
}

# ------------------------------------------------------------------------------ pytest
PYTEST=("$PY" -m pytest -p no:cacheprovider -p no:xvfb -p dc_pytest -q -rfEs)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(-p pytest_timeout --timeout=150)
export DC_PYTEST_NOTES="$WORK/pytest_notes.txt"
export PYTEST_CMD="${PYTEST[*]}"
s_pytest() {
    echo "### pytest -m gpu tests/ (${PYTEST_CMD})" >>"$OUT/pytest.log"
    : >"$DC_PYTEST_NOTES"
    $PYTEST_CMD -m gpu --continue-on-collection-errors tests 2>&1 | tee -a "$OUT/pytest.log"
    local rc=${PIPESTATUS[0]}
    tee -a "$OUT/pytest.log" <"$DC_PYTEST_NOTES"
    return "$rc"
}

# ------------------------------------------------------------------------------ smoke
s_smoke() {
    {
        local m b rc=0 t
        for m in lod adi; do
            for b in "$GPU_BACKEND" cpu; do
                t=$SECONDS
                "$PY" -m tmesim run scenarios/quickstart_2d.toml --backend "$b" -o "$WORK/q_${m}_$b.h5" \
                    --set run.duration_days=0.25 --set run.snapshot_every_hours=1 \
                    --set "solver.method=$m" -q 2>&1 | tail -3
                echo "$m on $b: exit ${PIPESTATUS[0]}, $((SECONDS - t)) s wall"
            done
            local mode=exact
            "$PY" "$WORK/compare_runs.py" "$WORK/q_${m}_$GPU_BACKEND.h5" "$WORK/q_${m}_cpu.h5" \
                "$mode" || rc=1
        done
        return $rc
    } 2>&1 | tee "$OUT/smoke.txt"
}

# ------------------------------------------------------------------------------ memcheck
SAN=$(command -v compute-sanitizer || true)
for f in /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/bin/compute-sanitizer; do
    [ -z "$SAN" ] && [ -x "$f" ] && SAN=$f
done
export SAN
MEMCHECK_TESTS=(
    "tests/steps/test_tumor_kernel.py::test_tumor_rules_on_device_and_deterministic[shape0-moore]"
    "tests/steps/test_stroma_kernel.py::test_stroma_rules_deterministic_on_gpu[shape0-moore]"
    "tests/steps/test_fields_kernel.py::test_gpu_runs_are_bitwise_reproducible[adi]"
    "tests/steps/test_fields_kernel.py::test_gpu_runs_are_bitwise_reproducible[lod]"
    "tests/steps/test_mechanics_kernel.py::test_push_rule_does_not_depend_on_thread_order[gpu-shape0-moore-2]"
    "tests/steps/test_medium.py::test_kernel_solver_is_numpys_bit_for_bit[gpu-shape1-lod-1.5-30.0]"
    "tests/test_rng_kernel.py::test_rng_repeats_and_empty[gpu]"
)
export MEMCHECK_IDS="${MEMCHECK_TESTS[*]}"
s_memcheck() {
    local log="$OUT/memcheck.log"
    if [ -z "$SAN" ]; then
        # the dry run (or an image without the tool) still checks that the tests exist
        echo "no compute-sanitizer: checking that the memcheck tests still exist" | tee -a "$log"
        # shellcheck disable=SC2086  # the ids hold no spaces
        $PYTEST_CMD --collect-only $MEMCHECK_IDS 2>&1 | tail -3 | tee -a "$log"
        local rc=${PIPESTATUS[0]}
        ((rc == 0)) && return 3
        return "$rc"
    fi
    echo "### compute-sanitizer memcheck (cupy pool off)" >>"$log"
    # shellcheck disable=SC2086
    "$SAN" --tool memcheck --error-exitcode 17 --print-limit 20 --target-processes all \
        $PYTEST_CMD -p dc_nopool $MEMCHECK_IDS 2>&1 | tail -60 | tee -a "$log"
}

# ------------------------------------------------------------------------------ probe
s_probe() {
    if [ -n "$DRY" ]; then
        "$PY" benchmarks/gpu_probe.py "$OUT" --portable --size 24 --budget $((CAP - 15))
    else
        "$PY" benchmarks/gpu_probe.py "$OUT" --size 256 --budget $((CAP - 15))
    fi
}

# ------------------------------------------------------------------------------ bench
s_bench() {
    local size=$1 extra=(--skip-run)
    # the dry run: the tiny grids on the C++ kernels, the second time with the (tiny) whole run
    [ -n "$DRY" ] && { size=tiny; extra=(--backend portable); }
    [ -n "$DRY" ] && [ "$1" = 3d-128 ] && extra+=(--skip-run)
    "$PY" benchmarks/bench_gpu.py "${extra[@]}" --sizes "$size" --repeats 3 --warm 2 \
        --out "$WORK/bench_$1.md" && cat "$WORK/bench_$1.md" >>"$OUT/bench_gpu.md"
}
export -f s_env s_pytest s_smoke s_memcheck s_probe s_bench

# ------------------------------------------------------------------------------ summary
cat >"$WORK/summary.py" <<'PYEOF'
import json, os, re
out = os.environ["OUT"]


def lines(path, pat):
    try:
        return [ln.rstrip() for ln in open(path) if re.search(pat, ln)]
    except OSError:
        return []


print("\n## tests (pytest -m gpu)\n")
for ln in lines(f"{out}/pytest.log", r"^(###|FAILED|ERROR|NOT RUN|NO TEST|COLLECTION ERROR)|"
                r"\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s"):
    print("   ", ln[:220])
print("\n## smoke: quickstart_2d for 6 h, device against CPU\n")
for ln in lines(f"{out}/smoke.txt", r"compared|FAILS|differs|: exit|rror"):
    print("   ", ln[:220])
print("\n## memcheck\n")
for ln in lines(f"{out}/memcheck.log", r"ERROR SUMMARY|========= (Invalid|Program hit)|"
                r"\d+ (passed|failed|skipped|errors?)\b|no compute-sanitizer|tests? collected"):
    print("   ", ln[:220])
try:
    p = json.load(open(f"{out}/probe.json"))
except (OSError, ValueError):
    p = {}
print("\n## probe (details in probe.md)\n")
d = p.get("device", {})
if d:
    print(f"- {d.get('device')} ({d.get('sm')} SMs, {d.get('mem_GiB', 0):.0f} GiB), cupy "
          f"{d.get('cupy')}; module build {p.get('module_build_s', 0):.1f} s; kernels unable to "
          f"take 256 threads or using local memory: {p.get('kernels_bad_launch')}")
for k, v in p.get("sanity", {}).items():
    print(f"- {k}: {v}")
m = p.get("micro", {})
if m:
    print(f"- copy {m.get('copy_GBps', 0):.0f} GB/s; launch {m.get('us_per_launch_driver', 0):.0f} "
          f"us, sync {m.get('us_per_bool_sync', 0):.0f} us")
s = p.get("step_ms")
if s:
    tot = s["fields"] + s["tumor"] + s["stroma"] + s["observe"]
    print(f"- {p.get('size', '?')}^3 agent step: fields {s['fields']:.1f} ms ({s['sweeps']:.0f} CG "
          f"sweeps), tumor {s['tumor']:.1f}, stroma {s['stroma']:.1f}, observe "
          f"{s['observe']:.1f} -> {tot:.1f} ms, {s['launches']:.0f} launches; 3,360 steps "
          f"~{p.get('projected_3360_steps_s', 0):.0f} s without I/O")
tl = p.get("timeline_field solver")
if tl:
    parts = sorted(tl["parts"].items(), key=lambda kv: -kv[1]["ms"])[:5]
    print("- field step's largest parts: "
          + "; ".join(f"{k} {v['ms']:.1f} ms" for k, v in parts) + f" (of {tl['total_ms']:.1f} ms)")
if p.get("lod"):
    print(f"- LOD field step: {p['lod']['total_ms']:.1f} ms")
if p.get("graph"):
    g = p["graph"]
    print(f"- preconditioner eager {g['eager_ms']:.2f} ms / graph {g['graph_ms']:.2f} ms, "
          f"bit for bit {g['bitwise_equal']}")
if p.get("io_s"):
    i = p["io_s"]
    print(f"- I/O at {p.get('size', '?')}^3: ~{i['writing']:.1f} s writing {i['snapshots']} "
          f"snapshots and the checkpoints of a 2-step run ({i['run']:.1f} s), file "
          f"{i['file_MB']:.0f} MB")
if p:
    print(f"- probe failures: {p.get('failures', [])}; skipped: {p.get('skipped', [])}")
print("\n## bench_gpu.py\n")
try:
    text = open(f"{out}/bench_gpu.md").read()
    print("\n".join(ln for ln in text.splitlines() if ln.startswith(("|", "Copy", "- device", "#"))))
except OSError:
    print("(none)")
PYEOF

# ------------------------------------------------------------------------------ run
#     name          est  cap  command
stage env             5   60  s_env
stage pytest         40  200  s_pytest
stage smoke          20   90  s_smoke
stage memcheck       30  120  s_memcheck
stage probe          45  150  s_probe
stage bench-3d-128   25   60  s_bench 3d-128
stage bench-3d-256   45  100  s_bench 3d-256
finish ""
