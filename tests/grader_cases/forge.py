"""The reported-field forger (tests/test_grader_protocol.py): runs the judge on one submission with the
run's secret draws fixed, and either records every reply of a correct submission or answers every
request of another submission with the recorded JSON (what a correct submission reported for the
same request), keeping that submission's own arrays. This is the attack a student who read
grader/protocol.py would make: every REPORTED field set to the right value. A check that then turns
from failed to passed awarded points from a reported field.

    python tests/grader_cases/forge.py record|forge|plain RECORD.json SUBMISSION.py RESULT.json

The forger keeps the reply consistent where the protocol binds JSON to arrays (a description's shape
and dtype are those of its array), as a real forger would have to.
"""
import json
import os
import sys

import numpy as np

from grader import check_plugin, expected, hygiene, judge, protocol
from grader.worker_process import CallFailed, WorkerProcess

SEED = 20261207


def main():
    mode, record_path, submission, result = sys.argv[1:5]
    expected.secret_rng = lambda: np.random.default_rng(SEED)  # the same draws in every run of this script
    hygiene.WALL_LIMIT = 600.0  # a loaded machine must not fail 5.6 on the import's wall time (not a reported field)
    original_reply = check_plugin.StudentCode.reply
    recorded = json.loads(open(record_path, encoding="utf-8").read()) if mode == "forge" else {}
    seen = {}

    def root():
        return str(check_plugin.SESSION["worker"].sandbox.root)

    def record_reply(request, value, arrays):
        seen[request.key] = {"value": value, "root": root()}
        return original_reply(request, value, arrays)

    def forged(key):
        text = json.dumps(recorded[key]["value"]).replace(json.dumps(recorded[key]["root"])[1:-1],
                                                          json.dumps(root())[1:-1])
        return json.loads(text)

    def forge_reply(request, value, arrays):
        if request.key in recorded:
            for name, arr in arrays.items():  # descriptions bound to arrays follow the arrays
                for a in protocol.OPS[request.op].arrays:
                    m = __import__("re").fullmatch(a.pattern, name)
                    if m and a.described is not None:
                        d = protocol._json_path(value, a.described(m))
                        if isinstance(d, dict):
                            d["shape"], d["dtype"] = list(arr.shape), str(arr.dtype)
        return original_reply(request, value, arrays)

    original_receive = WorkerProcess.receive

    def forge_receive(self, rid):
        entry = self._pending.get(rid)
        out = entry[1].get("out") if entry else None
        key = os.path.basename(out)[:-len("_out.npz")] if out else None
        try:
            value = original_receive(self, rid)
        except CallFailed as e:
            if key in recorded and e.kind in ("error", "missing"):
                return forged(key)
            raise
        return forged(key) if key in recorded else value

    if mode == "record":
        check_plugin.StudentCode.reply = staticmethod(record_reply)
    elif mode == "forge":
        check_plugin.StudentCode.reply = staticmethod(forge_reply)
        WorkerProcess.receive = forge_receive
    # generous limits: a loaded machine must not turn a verdict into a timeout
    rc = judge.main([submission, result, "--settings", json.dumps({"timeout": 300, "budget": 3000})])
    if mode == "record":
        with open(record_path, "w", encoding="utf-8") as f:
            json.dump(seen, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
