#!/usr/bin/env bash
# One-shot check of attnref on a CUDA machine, results in OUTDIR.
#
#   scripts/gpu-check.sh OUTDIR [--cpu]
#
# Steps (each with its own timeout; a failing step never stops the others):
#   info       versions, nvidia-smi, installed packages
#   setup      attnref from this checkout without network into $PYTHON's environment (the
#              machine is disposable): `pip install --no-deps --no-build-isolation --no-index -e .`;
#              if that fails, PYTHONPATH plus generated package metadata (entry points)
#   tests      tests/backends/test_torch_backend.py (its CUDA cases run on a GPU)
#   conform    `attnref conform --backend torch` on the default device (CUDA), then cupy
#   bench      scripts/gpu_bench.py: the torch backend vs SDPA and compiled FlexAttention
# Total worst case is bounded by TOTAL_SECONDS (default 450); typical runs take 3-5 minutes.
#
# Missing pure-Python dependencies (ml_dtypes, rich, pluggy, hypothesis) are installed from
# wheels in $ATTNREF_WHEELS (default: <repo>/shared/wheels) when present.
# --cpu: a dry run without a GPU (CPU device, small benchmark sizes, no nvidia-smi).
# ATTNREF_NO_INSTALL=1: skip the setup step and run with $PYTHON as it is (for a machine that
# is not disposable, where attnref is already installed).
#
# Outputs: gpu-check.log (everything), steps.tsv (step, exit code, seconds), one log per
# step, torch-tests.xml (JUnit), conform-torch.json, conform-cupy.json, bench.json.

set -u
set -o pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTDIR [--cpu]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
CPU_ONLY=0
[[ "${2:-}" == "--cpu" ]] && CPU_ONLY=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL_SECONDS=${TOTAL_SECONDS:-450}
WHEELS=${ATTNREF_WHEELS:-$REPO/shared/wheels}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/attnref-gpu-check.XXXXXX")
START=$(date +%s)

exec > >(tee -a "$OUT/gpu-check.log") 2>&1
printf 'step\trc\tseconds\n' > "$OUT/steps.tsv"
echo "gpu-check: repo $REPO, out $OUT, cpu-only $CPU_ONLY, started $(date -u +%FT%TZ)"
set -x

# step NAME SECONDS COMMAND...: run with a timeout (shortened to what is left of TOTAL_SECONDS),
# log to OUT/NAME.log, record the exit code; never fails.
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$(( TOTAL_SECONDS - ($(date +%s) - START) - 5 ))
    if (( left < 10 )); then
        echo "=== $name: skipped, total time budget spent"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        return 0
    fi
    (( limit > left )) && limit=$left
    echo "=== $name (timeout ${limit}s): $*"
    t0=$(date +%s)
    if declare -F "$1" > /dev/null; then  # a function of this script: run it in a child bash
        timeout -k 10 "$limit" bash -c "$*" > "$OUT/$name.log" 2>&1
    else
        timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    fi
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
    tail -n 40 "$OUT/$name.log"
    echo "=== $name: exit $rc ($(( $(date +%s) - t0 ))s)"
    return 0
}

# -- info ------------------------------------------------------------------------
info() {
    uname -a
    nproc
    if (( CPU_ONLY == 0 )); then nvidia-smi || echo "nvidia-smi failed"; fi
    "$PY" --version
    "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version)
for name in ("torch", "cupy", "numpy", "pluggy", "pytest", "hypothesis", "ml_dtypes", "rich", "setuptools", "xdist"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
try:
    import torch
    print("cuda available", torch.cuda.is_available(), "cuda", torch.version.cuda)
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
except Exception as exc:
    print("torch probe failed:", exc)
EOF
    "$PY" -m pip list 2>/dev/null | head -n 200
}
export -f info
export PY CPU_ONLY REPO WORK WHEELS
step info 30 info

# -- setup -----------------------------------------------------------------------
# The machine is disposable: attnref is installed (editable, offline) into $PY's own environment.
setup() {
    local missing
    missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(n for n in ("ml_dtypes", "rich", "pluggy", "hypothesis") if importlib.util.find_spec(n) is None))
EOF
)
    if [[ -n "$missing" ]]; then
        echo "missing: $missing; installing the wheels of $WHEELS into $WORK/site"
        if [[ -d "$WHEELS" ]]; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl \
                || echo "wheel install failed"
            echo "export PYTHONPATH=$WORK/site\${PYTHONPATH:+:\$PYTHONPATH}" >> "$WORK/env.sh"
            source "$WORK/env.sh"
        else
            echo "no wheel folder $WHEELS: attnref may not import"
        fi
    fi
    if "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$REPO"; then
        echo "installed attnref (editable) for $PY"
    else
        echo "pip install failed: using PYTHONPATH and generated metadata"
        meta "$WORK/meta"
    fi
    [[ -f "$WORK/env.sh" ]] && source "$WORK/env.sh"
    "$PY" -c "import attnref; print(attnref.__version__, attnref.list_backends()); [print(s) for s in attnref.backend_statuses()]"
}

# The package metadata pip would write (name, version, entry points), for a PYTHONPATH run.
meta() {
    mkdir -p "$1/attnref.egg-info"
    "$PY" - "$REPO" "$1/attnref.egg-info" <<'EOF'
import sys, tomllib
repo, target = sys.argv[1], sys.argv[2]
project = tomllib.load(open(f"{repo}/pyproject.toml", "rb"))["project"]
open(f"{target}/PKG-INFO", "w").write(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
lines = []
for group, points in project.get("entry-points", {}).items():
    lines.append(f"[{group}]")
    lines += [f"{name} = {value}" for name, value in points.items()]
for name, value in project.get("scripts", {}).items():
    lines += ["[console_scripts]", f"{name} = {value}"]
open(f"{target}/entry_points.txt", "w").write("\n".join(lines) + "\n")
print(open(f"{target}/entry_points.txt").read())
EOF
    echo "export PYTHONPATH=$REPO:$REPO/backends:$1\${PYTHONPATH:+:\$PYTHONPATH}" >> "$WORK/env.sh"
}
export -f setup meta
if [[ "${ATTNREF_NO_INSTALL:-0}" == 1 ]]; then  # use $PY as it is (attnref already importable there)
    echo "ATTNREF_NO_INSTALL=1: nothing installed"
else
    step setup 90 setup
fi
[[ -f "$WORK/env.sh" ]] && source "$WORK/env.sh"
VPY=$PY
if ! "$VPY" -c "import attnref" 2>/dev/null; then
    echo "attnref does not import after setup: trying the checkout with generated metadata"
    meta "$WORK/meta"
    source "$WORK/env.sh"
fi
echo "PYTHONPATH=${PYTHONPATH:-}"

if (( CPU_ONLY == 1 )); then
    export ATTNREF_TORCH_DEVICE=cpu
else
    export ATTNREF_TORCH_DEVICE=cuda
fi

# -- tests -----------------------------------------------------------------------
XDIST=()
"$VPY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
step tests 150 "$VPY" -m pytest "$REPO/tests/backends/test_torch_backend.py" -q -rfEs -p no:cacheprovider \
    "${XDIST[@]}" --junitxml="$OUT/torch-tests.xml"

# -- conformance -------------------------------------------------------------------
step conform-torch 75 "$VPY" -m attnref conform --backend torch --json "$OUT/conform-torch.json"
if (( CPU_ONLY == 0 )); then
    step conform-cupy 75 "$VPY" -m attnref conform --backend cupy --json "$OUT/conform-cupy.json"
fi

# -- benchmarks --------------------------------------------------------------------
BENCH=(--out "$OUT/bench.json" --budget 90)
(( CPU_ONLY == 1 )) && BENCH+=(--device cpu --small)
step bench 130 "$VPY" "$REPO/scripts/gpu_bench.py" "${BENCH[@]}"

# -- summary -----------------------------------------------------------------------
set +x
echo "=== summary ($(( $(date +%s) - START ))s)"
cat "$OUT/steps.tsv"
for report in "$OUT"/conform-*.json; do
    [[ -f "$report" ]] || continue
    "$VPY" - "$report" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
for name, backend in data.get("backends", {}).items():
    print(sys.argv[1].rsplit("/", 1)[-1], name, "available" if backend.get("available") else f"unavailable: {backend.get('reason')}", backend.get("summary"))
EOF
done
[[ -f "$OUT/bench.json" ]] && "$VPY" - "$OUT/bench.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
print("bench on", data.get("device"), "torch", data.get("torch"), "skipped:", data.get("skipped"))
for row in data.get("cases", []):
    times = {k[:-3]: round(v, 2) for k, v in row.items() if k.endswith("_ms")}
    print(row.get("case"), row.get("L"), row.get("dtype"), times, {k: round(v, 2) for k, v in row.items() if k.startswith("speedup")}, row.get("error", ""))
EOF
rm -rf "$WORK"
exit 0
