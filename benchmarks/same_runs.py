"""Record every shipped scenario's run, or check that the code still writes the same ones.

A refactor that claims "no change in behaviour" is checked with this: record the runs on the
commit before it, then compare on the commit after. Every scenario file under ``scenarios/`` is
run through the command line (shortened so the whole set takes minutes on 2 cores): plain
scenarios with ``tmesim run`` (on the CPU, and the 2D ones also through the kernels' portable
C++ build), comparison files with ``tmesim compare`` (one replicate, shortened arms), the sweep
with ``tmesim sweep``'s table, and ``tmesim validate-model --quick``'s printout.

Run files are compared dataset by dataset (snapshots, time series, events, checkpoint) and root
attribute by root attribute, bit for bit, except the attributes that name when and by which
version the file was written (``created``, ``tmesim_version``); printouts are compared as text
after removing wall times.

    python benchmarks/same_runs.py record /tmp/before     # on the old commit
    python benchmarks/same_runs.py check /tmp/before      # on the new one: exit 1 on a difference
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
#: root attributes that say when/which version wrote a file, not what was simulated
VOLATILE_ATTRS = {"created", "tmesim_version"}
#: attributes that hold the path of the checkout the scenario was loaded from
PATH_ATTRS = {"checkpoint@scenario_base_dir"}
#: overrides that shorten each scenario (days, and a smaller lattice for the 256^3 benchmark)
SHORTEN = {
    "bench_3d_256.toml": ["grid.shape=[40,40,40]", "run.duration_days=1"],
    "spheroid_3d.toml": ["run.duration_days=3"],
    "sharma_reversibility.toml": ["run.duration_days=6"],
}
DEFAULT_DAYS = 4
#: scenarios also run through the kernels' C++ build (the --backend portable path)
PORTABLE = ["quickstart_2d.toml", "pc9_erlotinib_caf_2d.toml", "spheroid_3d.toml"]


def kind_of(path: Path) -> str:
    data = tomllib.loads(path.read_text())
    if "sweep" in data:
        return "sweep"
    if "arms" in data:
        return "comparison"
    return "scenario"


def shorten(path: Path, duration_days: float) -> list[str]:
    sets = SHORTEN.get(path.name)
    if sets is not None:
        return sets
    return [f"run.duration_days={min(duration_days, DEFAULT_DAYS):g}"]


def tmesim(*args: str, cwd: Path) -> str:
    # this checkout's tmesim, whatever is installed
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'viewer'}")
    r = subprocess.run(
        [sys.executable, "-m", "tmesim.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if r.returncode not in (0,):
        raise SystemExit(f"tmesim {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def scrub(text: str) -> str:
    """Printout without wall-clock figures and temporary paths."""
    text = re.sub(r"\d+(\.\d+)? ?s\b", "<s>", text)
    return re.sub(r"/tmp/\S+", "<tmp>", text)


def record(out: Path, only: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="same_runs_"))
    for p in sorted(SCENARIOS.rglob("*.toml")):
        rel = p.relative_to(SCENARIOS)
        if only and not rel.match(only):
            continue
        tag = str(rel.with_suffix("")).replace("/", "__")
        k = kind_of(p)
        print(f"{k:10s} {rel}", flush=True)
        if k == "scenario":
            days = tomllib.loads(p.read_text()).get("run", {}).get("duration_days", DEFAULT_DAYS)
            sets = [a for s in shorten(p, days) for a in ("--set", s)]
            tmesim(
                "run",
                str(p),
                "-o",
                str(out / f"{tag}.h5"),
                "--backend",
                "cpu",
                "-q",
                *sets,
                cwd=work,
            )
            if p.name in PORTABLE:
                tmesim(
                    "run",
                    str(p),
                    "-o",
                    str(out / f"{tag}.portable.h5"),
                    "--backend",
                    "portable",
                    "-q",
                    *sets,
                    cwd=work,
                )
        elif k == "comparison":
            data = tomllib.loads(p.read_text())
            base = (p.parent / data["scenario"]).resolve()
            days = tomllib.loads(base.read_text()).get("run", {}).get("duration_days", 4)
            data["replicates"] = 1
            # shorten every arm: its own sets first, then the shortening (which wins)
            for arm in data["arms"].values():
                arm["set"] = list(arm.get("set", [])) + [f"run.duration_days={min(days, 8):g}"]
            data["scenario"] = str(base)
            data["times_days"] = [d for d in data.get("times_days", []) if d <= 8] or [2]
            data.pop("pairs", None)
            data.pop("contrasts", None)
            data.pop("margin_days", None)
            cf = work / f"{tag}.toml"
            cf.write_text(_toml(data))
            (out / f"{tag}.txt").write_text(scrub(tmesim("compare", str(cf), cwd=work)))
        else:
            d = work / tag
            shutil.copytree(p.parent, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs"))
            sp = d / p.name
            text = sp.read_text().replace('scenario = "../', f'scenario = "{p.parent.parent}/')
            sp.write_text(text)
            tmesim("sweep", str(sp), "--workers", "1", cwd=work)
            spec = tomllib.loads(text)["sweep"]
            summary = sp.parent / spec["out_dir"] / spec.get("summary", "summary.csv")
            (out / f"{tag}.csv").write_text(_sorted_csv(summary.read_text()))
    if only and only != "validate-model":
        return
    print("validate-model --quick", flush=True)
    (out / "validate_model_quick.txt").write_text(
        scrub(tmesim("validate-model", "--quick", cwd=work))
    )
    shutil.rmtree(work, ignore_errors=True)


def _sorted_csv(text: str) -> str:
    head, *rows = text.splitlines()
    # drop wall-time and path columns
    cols = head.split(",")
    keep = [i for i, c in enumerate(cols) if not any(w in c for w in ("wall", "path", "file"))]
    pick = lambda line: ",".join(line.split(",")[i] for i in keep)  # noqa: E731
    return "\n".join([pick(head)] + sorted(pick(r) for r in rows)) + "\n"


def _toml(data: dict) -> str:
    def val(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {val(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for arm, spec in data["arms"].items():
        lines += [f"[arms.{arm}]", f"set = {val(spec['set'])}"]
    return "\n".join(lines) + "\n"


def h5_items(path: Path) -> dict:
    items = {}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            if k not in VOLATILE_ATTRS:
                items[f"@{k}"] = v

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[()]
            for k, v in obj.attrs.items():
                if f"{name}@{k}" not in PATH_ATTRS:
                    items[f"{name}@{k}"] = v

        f.visititems(visit)
    return items


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    return np.array_equal(a, b)


def check(ref: Path, only: str | None = None) -> int:
    new = Path(tempfile.mkdtemp(prefix="same_runs_new_"))
    record(new, only)
    bad = 0
    for r in sorted(ref.iterdir()):
        n = new / r.name
        if not n.exists():
            if only:
                continue
            print(f"MISSING {r.name}")
            bad += 1
            continue
        if r.suffix == ".h5":
            a, b = h5_items(r), h5_items(n)
            diff = sorted(
                k for k in set(a) | set(b) if k not in a or k not in b or not same(a[k], b[k])
            )
            print(
                f"{'SAME' if not diff else 'DIFFERENT'} {r.name}"
                + (f": {', '.join(diff[:12])}" if diff else f" ({len(a)} items)")
            )
            bad += bool(diff)
        else:
            ok = r.read_text() == n.read_text()
            print(f"{'SAME' if ok else 'DIFFERENT'} {r.name}")
            bad += not ok
    extra = sorted(set(p.name for p in new.iterdir()) - set(p.name for p in ref.iterdir()))
    for e in extra:
        print(f"NEW {e}")
    print(f"{bad} difference(s); new runs in {new}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("folder", type=Path)
    ap.add_argument(
        "--only",
        help="scenario files matching this glob (relative to scenarios/, "
        "e.g. 'validation/*.toml'), or 'validate-model'",
    )
    a = ap.parse_args()
    if a.mode == "record":
        record(a.folder, a.only)
        return 0
    return check(a.folder, a.only)


if __name__ == "__main__":
    raise SystemExit(main())
