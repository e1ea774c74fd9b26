#!/usr/bin/env bash
# Gradescope image setup (Ubuntu): Python 3 and the kit's requirements, CPU-only torch.
# The autograder zip holds the kit (grader/, data/, requirements.txt; not the reference solution) plus this
# file and run_autograder at its root; Gradescope unpacks it to /autograder/source.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends python3 python3-pip python3-venv
cd /autograder/source
python3 -m pip install --break-system-packages --index-url https://download.pytorch.org/whl/cpu torch torchvision \
  || python3 -m pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
python3 -m pip install --break-system-packages -r requirements.txt \
  || python3 -m pip install -r requirements.txt
# Smoke test at build time: the grader imports and the rubric adds up.
python3 -m grader --rubric > /dev/null
