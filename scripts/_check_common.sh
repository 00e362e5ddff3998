# Shared by scripts/check-latest and scripts/check-oldest (sourced, not run).
#   usage: scripts/check-latest|check-oldest [--no-tests] [VENV]
# VENV: where to build the fresh venv (kept afterwards; an existing venv there is cleared first);
# default: a temporary directory, removed at exit. --no-tests: stop after printing the versions.
# Exit status: pytest's (5, no test collected, fails too), 2 for bad arguments.

run_tests=1
venv=
for arg in "$@"; do
  case $arg in
    --no-tests) run_tests=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "$(basename "$0"): unknown option $arg (usage: $(basename "$0") [--no-tests] [VENV])" >&2; exit 2 ;;
    *) [ -z "$venv" ] || { echo "$(basename "$0"): one VENV path at most" >&2; exit 2; }; venv=$(realpath -m -- "$arg") ;;
  esac
done

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "$(basename "$0"): needs Python 3.11 (the CPU torch wheel pinned by requirements/cpu.txt is cp311); set PYTHON" >&2
  exit 2
}

if [ -z "$venv" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  venv=$tmp/venv
elif [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
  echo "$(basename "$0"): $venv exists and is not a venv; refusing to clear it" >&2
  exit 2
fi
"$python" -m venv --clear "$venv"
py=$venv/bin/python
echo "venv: $venv"

print_versions() {
  "$py" - <<'PY'
import platform
from importlib.metadata import PackageNotFoundError, version

print(f"{'python':13} {platform.python_version()}")
for name in ("torch", "transformers", "peft", "tokenizers", "datasets", "trl", "accelerate",
             "jsonargparse", "safetensors"):
    try:
        v = version(name)
    except PackageNotFoundError:
        v = "(not installed)"
    print(f"{name:13} {v}")
PY
}

run_tests_and_exit() {
  [ "$run_tests" -eq 1 ] || exit 0
  set +e
  PATH="$(dirname "$py"):$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$py" -m pytest -q  # torchrun from the venv
  status=$?
  set -e
  [ "$status" -ne 5 ] || echo "$(basename "$0"): pytest collected no tests: failing" >&2
  exit "$status"
}
