#!/usr/bin/env bash
# Gradescope image setup (Ubuntu, runs as root): Python 3 and the kit's requirements (CPU-only torch),
# the unprivileged account the grader runs student code as, and a smoke test that grades for real.
# The autograder zip holds the kit (grader/, data/, requirements.txt), this file and run_autograder at
# its root, and smoke/ (a correct copy and the blank template, see grader/README.md); Gradescope
# unpacks it to /autograder/source. smoke/ is deleted after the test: student code never sees it.
set -euo pipefail
PY="${PY:-python3}"

# pip install, system-wide (/usr/local: an unprivileged user can run it, unlike a venv under /root).
# pip >= 23.0.1 on a distribution that marks its Python "externally managed" (Ubuntu 23.04+, Debian
# 12+) needs --break-system-packages; older pips (Ubuntu 22.04's 22.0.2) do not know the option and
# fail on it. So ask pip whether it has it, instead of trying and failing into the log.
pip_install() {
    local flags=() help
    # Read the whole help first: `pip ... | grep -q` would end pip with SIGPIPE, failing under pipefail.
    help="$("$PY" -m pip install --help 2>/dev/null || true)"
    if grep -q -- '--break-system-packages' <<<"$help"; then
        flags+=(--break-system-packages)
    fi
    if grep -q -- '--root-user-action' <<<"$help"; then
        flags+=(--root-user-action=ignore)  # setup.sh runs as root on purpose
    fi
    "$PY" -m pip install --no-input ${flags[@]+"${flags[@]}"} "$@"
}

# `source setup.sh` (tests) defines pip_install and stops here.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi

apt-get update
apt-get install -y --no-install-recommends python3 python3-pip python3-venv
cd /autograder/source
# CPU-only torch first (no GPU on Gradescope; CUDA's libraries would also cost ~150 MB more memory per
# process at import, see grader/README.md "Memory"), then the rest, which torch then already satisfies.
pip_install --index-url https://download.pytorch.org/whl/cpu torch torchvision
pip_install -r requirements.txt

# Layer 2 of the trust model: workers run as uids from this account's uid upwards (one per parallel
# grading), never as root. The account only names the first of them; the others need no entry.
if ! id e6grader >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin --uid 1879048192 --user-group e6grader \
      || useradd --system --no-create-home --shell /usr/sbin/nologin --user-group e6grader
fi
# The kit is root's: student code (another uid) must not read or write it.
chmod -R go-rwx /autograder/source
chmod 755 /autograder/source

# Smoke test: a real grading, not just an import. The blank template must get 0, a correct copy 100,
# and the separate-user layer must be active.
if [ -f smoke/correct.py ] && [ -f smoke/blank.py ]; then
    out="$(mktemp -d)"
    "$PY" -m grader smoke/correct.py smoke/blank.py --out "$out" --jobs 1
    "$PY" - "$out" <<'PYEOF'
import csv, json, sys
out = sys.argv[1]
rows = {r["student"]: r for r in csv.DictReader(open(out + "/grades.csv", encoding="utf-8"))}
assert rows["correct"]["total"] == "100", rows["correct"]
assert rows["blank"]["total"] == "0", rows["blank"]
prot = json.load(open(out + "/correct/results.json", encoding="utf-8"))["extra_data"]["protection"]
assert "separate uid" in prot, f"student code would not run as a separate user here: {prot}"
print(f"[setup] smoke test passed: correct 100, blank 0; protection: {prot}")
PYEOF
    rm -rf "$out" smoke
else
    echo "[setup] WARNING: no smoke/ folder in the autograder zip: only checking that the grader imports" >&2
    "$PY" -m grader --rubric > /dev/null
fi
